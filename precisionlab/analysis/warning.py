"""Early warning: does a per-step metric cross a threshold before a run diverges, how early, and
how often does it cross in runs that end fine?

The paper's use of sharpness (and Wortsman et al.'s of attention logits, Su et al.'s of gradient
fidelity) is a claim about lead time. Signals: the gradient norm of every step, sharpness with
`sharpness.every`, numerical diagnostics with `diagnostics.every`. Everything is per learning rate
(signals scale with it: sharpness sits near 2/η at the edge of stability) and time-matched: a run
is compared with completed runs at the same step, because most signals drift during training.

  signed value   the signal, negated where low is bad (gradient cosine), so larger is worse
  running max    m_r(t): a run's largest signed value at the steps s <= t it measured (a diverged
                 run's only before its divergence step D); a signal measured every N steps keeps
                 its last value in between
  references     of a run r: the completed runs at r's LR whose seed differs from r's (leave one
                 *seed* out: the same seed in another format shares initial weights and batches,
                 so it is not independent evidence). Bit-identical runs (same seed, LR, status and
                 train-loss sequence, e.g. a clipped exponent that never clips) count once.
  threshold      T_r(t) = the largest running max of r's references at step t: the highest any
                 of them had reached by then
  warned         a diverged run with m_d(t) > T_d(t) at some measured step t < D; its lead time is
                 D minus the first such step; warned counts lead >= `lead`
  false alarm    a completed run with m_c(t) > T_c(t) at any step of its run (each completed run is
                 judged by its own references, so every completed run can be one: never capped)

ROC (every threshold, not only the references' maximum). At lead k, diverged run d is judged at
t = D - k, with what the signal showed by then (m_d(t)); each reference c of d is compared at the
same step (m_c(t)). A threshold that lets a fraction α of the completed runs at that LR and step
through (false-alarm rate α) catches d when fewer than α of them sit at or above it, so the ROC is
the distribution of the diverged runs' exceedances e_d = (#references above + ½ #tied) / #references
(Pepe's placement values), each d weighted by its number of references. Its area is the
Mann-Whitney statistic over the comparable (diverged, completed) pairs, U / #pairs, which at one
LR and one divergence step is scipy's `mannwhitneyu(diverged, completed).statistic / (n1 n2)`.
AUC 0.5: the signal does not separate runs about to diverge from runs at the same step that will
complete; 1: it always does. `windows` gives the AUC at leads 1, 5, 10, 20 steps (what the signal
showed at least that far ahead); diverged runs without a measurement by D - k do not count there.

AUC interval: the score interval of Hanley and McNeil's variance (1982), solving
(A - θ)² = z² V(θ, m, n) for θ (m diverged runs, n distinct completed runs compared). Chosen over
DeLong's variance with a logit transform because that one has zero width when the groups separate
completely (A = 1), which at a handful of diverged runs is the common case: simulated 95% coverage,
normal scores with shifts giving AUC 0.5-0.998, m = 3-17, n = 5-100, was 94-99% for this interval
and down to 3% for DeLong's (tests/analysis/test_warning_roc.py). It treats runs as independent:
formats of one seed share initial weights and batches, and where they barely change the curves
the interval is too narrow (bit-identical runs are merged for this reason; near-identical ones are
not). Hit and false-alarm fractions carry exact (Clopper-Pearson) intervals.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

from precisionlab.analysis.stats import LEVEL, exact_binomial_ci

__all__ = ["signals", "distinct", "early_warning", "windows", "roc", "aligned", "auc_interval",
           "LOW_IS_BAD", "DEFAULT_LEAD", "LEADS"]

LOW_IS_BAD = ("grad_cosine",)  # signals whose warning is a drop (their name ends so)
DEFAULT_LEAD = 10              # steps of warning that count as "ahead"
LEADS = (1, 5, 10, 20)         # the leads `windows` reports the AUC at
COLUMNS = ["signal", "diverged", "calibrated", "warned", "warned_low", "warned_high", "median_lead",
           "completed", "false_alarms", "false_alarm_low", "false_alarm_high",
           "auc", "auc_low", "auc_high", "auc_diverged", "auc_completed"]
WINDOW_COLUMNS = ["signal", "lead", "diverged", "completed", "auc", "auc_low", "auc_high"]


def signals(curves: pd.DataFrame, sharpness: pd.DataFrame | None = None,
            diagnostics: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every per-step signal as one long table (run_id, step, signal, value): `grad_norm` from the
    train metrics, `sharpness <metric> (<params>)` from sharpness values (params as the report
    labels them), and from diagnostics when given the model-level ones (site "model": grad_cosine,
    grad_error, logit_max, log_z) and the largest attention logit over the layers."""
    parts = []
    if not curves.empty and "grad_norm" in curves:
        train = curves[curves.split == "train"]
        parts.append(pd.DataFrame({"run_id": train.run_id, "step": train.step, "signal": "grad_norm",
                                   "value": train.grad_norm.astype(float)}))
    if sharpness is not None and not sharpness.empty:
        label = [f"sharpness {m}" + (f" ({p})" if p else "") for m, p in zip(sharpness.metric, sharpness.params)]
        parts.append(pd.DataFrame({"run_id": sharpness.run_id, "step": sharpness.step, "signal": label,
                                   "value": sharpness.value.astype(float)}))
    if diagnostics is not None and not diagnostics.empty:
        model = diagnostics[diagnostics.site == "model"]
        parts.append(pd.DataFrame({"run_id": model.run_id, "step": model.step, "signal": model.name,
                                   "value": model.value.astype(float)}))
        layers = diagnostics[diagnostics.name == "attn_logit_max"]
        if len(layers):  # Wortsman et al.'s attention-logit growth: the largest over the layers
            top = layers.groupby(["run_id", "step"]).value.max().reset_index()
            parts.append(top.assign(signal="attn_logit_max (largest layer)"))
    if not parts:
        return pd.DataFrame(columns=["run_id", "step", "signal", "value"])
    out = pd.concat(parts, ignore_index=True)
    return out[np.isfinite(out.value)].sort_values(["signal", "run_id", "step"], ignore_index=True)


def distinct(runs: pd.DataFrame, curves: pd.DataFrame | None) -> pd.DataFrame:
    """`runs` with one run of each bit-identical group: the same seed, LR and status and the same
    train-loss sequence (steps and values, compared exactly) are one computation, however its
    format was named. The first run_id in sorted order stands for the group."""
    if curves is None or curves.empty:
        return runs
    train = curves[curves.split == "train"].sort_values(["run_id", "step"])
    loss = {run_id: (tuple(g.step), np.asarray(g.loss, dtype=float).tobytes()) for run_id, g in train.groupby("run_id")}
    seen, keep = set(), []
    for run in runs.sort_values("run_id").itertuples():
        key = (run.seed, run.lr, run.status, loss.get(run.run_id, run.run_id))  # no curve: its own group
        keep.append(key not in seen)
        seen.add(key)
    return runs.sort_values("run_id")[keep].sort_index()


def _low_is_bad(signal: str) -> bool:
    return signal.endswith(LOW_IS_BAD)


@dataclass
class _Panel:
    """One signal at one LR: the runs (rows) and the running max of their signed values at every
    step any of them measured (columns; NaN before a run's first measurement)."""
    signal: str
    sign: float
    lr: float
    runs: pd.DataFrame       # run_id, seed, status, diverged_step, in the rows' order
    steps: np.ndarray
    values: np.ndarray       # rows x steps: signed values, NaN where a run did not measure
    running_max: np.ndarray

    def references(self, i: int) -> np.ndarray:
        """Row indices of run i's references: completed runs of another seed."""
        return np.flatnonzero((self.runs.status.to_numpy() == "completed")
                              & (self.runs.seed.to_numpy() != self.runs.seed.iloc[i]))

    def threshold(self, i: int) -> np.ndarray:
        """T_i(t) at every step (NaN where no reference has measured yet)."""
        refs = self.running_max[self.references(i)]
        return np.fmax.reduce(refs, axis=0) if len(refs) else np.full(len(self.steps), np.nan)

    def measured(self, i: int) -> np.ndarray:
        """Column indices of the steps run i measured (before its divergence, if it diverged)."""
        return np.flatnonzero(np.isfinite(self.values[i]))

    def index_at(self, step: float) -> int:
        """The last column at or before `step` (-1 when none)."""
        return int(np.searchsorted(self.steps, step, side="right")) - 1


def _panels(runs: pd.DataFrame, signal_table: pd.DataFrame, curves: pd.DataFrame | None) -> Iterator[_Panel]:
    """Every (signal, LR) with its runs' signal before they stopped: a diverged run's last step
    is its divergence, so only steps < diverged_step count."""
    runs = distinct(runs, curves)
    runs = runs.assign(seed=runs.seed.where(runs.seed.notna(), runs.run_id))  # no seed: a seed of its own
    info = runs.set_index("run_id")[["lr", "seed", "status", "diverged_step"]]
    values = signal_table.join(info, on="run_id", how="inner")
    values = values[values.status.isin(["completed", "diverged"])
                    & ((values.status != "diverged") | (values.step < values.diverged_step))]
    for (signal, lr), at_lr in values.groupby(["signal", "lr"], sort=True):
        sign = -1.0 if _low_is_bad(signal) else 1.0
        wide = (sign * at_lr.value).groupby([at_lr.run_id, at_lr.step]).max().unstack("step").sort_index(axis=1)
        signed = wide.to_numpy(dtype=float)
        yield _Panel(signal, sign, float(lr), info.loc[wide.index].reset_index(), wide.columns.to_numpy(dtype=float),
                     signed, np.fmax.accumulate(signed, axis=1))


def auc_interval(auc: float, m: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Score interval for an AUC from m positives and n negatives: the θ with
    (auc - θ)² <= z² V(θ), V Hanley and McNeil's variance of the Mann-Whitney AUC at θ
    (module docstring); (nan, nan) without both groups."""
    if m == 0 or n == 0 or math.isnan(auc):
        return math.nan, math.nan
    z = stats.norm.ppf(0.5 + level / 2)

    def outside(theta: float) -> float:
        q1, q2 = theta / (2 - theta), 2 * theta * theta / (1 + theta)
        variance = (theta * (1 - theta) + (m - 1) * (q1 - theta ** 2) + (n - 1) * (q2 - theta ** 2)) / (m * n)
        return (auc - theta) ** 2 - z * z * variance

    # the roots bracket auc; at auc = 0 or 1 the variance vanishes there too, so step off it
    low = 0.0 if auc <= 0 or outside(0.0) <= 0 else optimize.brentq(outside, 0.0, min(auc, 1 - 1e-12))
    high = 1.0 if auc >= 1 or outside(1.0) <= 0 else optimize.brentq(outside, max(auc, 1e-12), 1.0)
    return float(low), float(high)


def _exceedances(panel: _Panel, lead: int) -> Iterator[tuple[str, float, np.ndarray]]:
    """Per diverged run with a measurement by D - lead and references measured then: its run_id,
    its exceedance e_d (the fraction of references at or above it, ties ½) and the references'
    run_ids."""
    for i in np.flatnonzero(panel.runs.status.to_numpy() == "diverged"):
        j = panel.index_at(panel.runs.diverged_step.iloc[i] - lead)
        if j < 0 or not np.isfinite(panel.running_max[i, j]):
            continue
        refs = panel.references(i)
        refs = refs[np.isfinite(panel.running_max[refs, j])]
        if not len(refs):
            continue
        x, others = panel.running_max[i, j], panel.running_max[refs, j]
        yield panel.runs.run_id.iloc[i], float(np.mean((others > x) + 0.5 * (others == x))), panel.runs.run_id.to_numpy()[refs]


def _roc_points(panels: list[_Panel], lead: int) -> tuple[pd.DataFrame, int, int]:
    """Exceedances at `lead` over the signal's LRs (run_id, exceedance, weight = #references),
    the number of diverged runs and of distinct completed runs compared."""
    rows, controls = [], set()
    for panel in panels:
        for run_id, exceedance, refs in _exceedances(panel, lead):
            rows.append((run_id, exceedance, len(refs)))
            controls.update(refs)
    return pd.DataFrame(rows, columns=["run_id", "exceedance", "weight"]), len(rows), len(controls)


def _auc(points: pd.DataFrame) -> float:
    """U / #pairs: 1 minus the pair-weighted mean exceedance."""
    return 1.0 - float(np.average(points.exceedance, weights=points.weight)) if len(points) else math.nan


def _by_signal(runs, signal_table, curves) -> Iterator[tuple[str, list[_Panel]]]:
    panels = list(_panels(runs, signal_table, curves))
    for signal in dict.fromkeys(p.signal for p in panels):
        yield signal, [p for p in panels if p.signal == signal]


def _operating_point(panel: _Panel) -> tuple[list, int, int, int]:
    """At the time-matched threshold T: the diverged runs' lead times (None: never crossed), how
    many diverged runs had a threshold, how many completed runs had one and how many crossed it."""
    leads, calibrated, completed, alarms = [], 0, 0, 0
    for i, status in enumerate(panel.runs.status):
        steps = panel.measured(i)
        threshold = panel.threshold(i)[steps]
        if not np.isfinite(threshold).any():
            continue  # no reference had measured by any of its steps
        crossed = steps[panel.running_max[i, steps] > threshold]  # NaN thresholds compare False
        if status == "diverged":
            calibrated += 1
            first = panel.steps[crossed[0]] if len(crossed) else None
            leads.append(None if first is None else int(panel.runs.diverged_step.iloc[i] - first))
        else:
            completed += 1
            alarms += bool(len(crossed))
    return leads, calibrated, completed, alarms


def early_warning(runs: pd.DataFrame, signal_table: pd.DataFrame, lead: int = DEFAULT_LEAD, *,
                  curves: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per signal: diverged runs (bit-identical ones once; given `curves`, else every run), warned
    fraction at least `lead` steps ahead at the time-matched threshold, median lead time of those
    that crossed, false alarms among completed runs, and the AUC at `lead` with its interval
    (module docstring). `runs` needs run_id, lr, seed, status and diverged_step."""
    rows = []
    for signal, panels in _by_signal(runs, signal_table, curves):
        leads, n_diverged, n_calibrated, n_completed, alarms = [], 0, 0, 0, 0
        for panel in panels:
            n_diverged += int((panel.runs.status == "diverged").sum())
            lead_times, calibrated, completed, alarmed = _operating_point(panel)
            leads += [x for x in lead_times if x is not None]
            n_calibrated, n_completed, alarms = n_calibrated + calibrated, n_completed + completed, alarms + alarmed
        warned = sum(lead_time >= lead for lead_time in leads)
        points, m, n = _roc_points(panels, lead)
        auc = _auc(points)
        rows.append({"signal": signal, "diverged": n_diverged, "calibrated": n_calibrated, "warned": warned,
                     **dict(zip(["warned_low", "warned_high"], exact_binomial_ci(warned, n_calibrated))),
                     "median_lead": float(np.median(leads)) if leads else math.nan,
                     "completed": n_completed, "false_alarms": alarms,
                     **dict(zip(["false_alarm_low", "false_alarm_high"], exact_binomial_ci(alarms, n_completed))),
                     "auc": auc, **dict(zip(["auc_low", "auc_high"], auc_interval(auc, m, n))),
                     "auc_diverged": m, "auc_completed": n})
    return pd.DataFrame(rows, columns=COLUMNS)


def windows(runs: pd.DataFrame, signal_table: pd.DataFrame, leads=LEADS, *,
            curves: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per signal and lead k: the AUC of what the signal showed by k steps before the divergence,
    with its interval, and the diverged and distinct completed runs compared."""
    rows = []
    for signal, panels in _by_signal(runs, signal_table, curves):
        for lead in leads:
            points, m, n = _roc_points(panels, lead)
            auc = _auc(points)
            rows.append({"signal": signal, "lead": lead, "diverged": m, "completed": n, "auc": auc,
                         **dict(zip(["auc_low", "auc_high"], auc_interval(auc, m, n)))})
    return pd.DataFrame(rows, columns=WINDOW_COLUMNS)


def roc(runs: pd.DataFrame, signal_table: pd.DataFrame, leads=LEADS, *,
        curves: pd.DataFrame | None = None) -> pd.DataFrame:
    """The ROC curves' vertices per signal and lead: false_alarm_rate (of completed runs at the
    same LR and step) and hit_rate (of diverged runs, weighted by their references), from (0, 0)
    to (1, 1); the area under the steps is the AUC of `windows`."""
    out = []
    for signal, panels in _by_signal(runs, signal_table, curves):
        for lead in leads:
            points, _, _ = _roc_points(panels, lead)
            if points.empty:
                continue
            by_level = points.groupby("exceedance").weight.sum().sort_index()
            x = np.concatenate([[0.0], np.repeat(by_level.index.to_numpy(), 2), [1.0]])
            hits = np.cumsum(by_level.to_numpy()) / by_level.sum()
            y = np.concatenate([[0.0, 0.0], np.repeat(hits[:-1], 2), [1.0, 1.0]])
            out.append(pd.DataFrame({"signal": signal, "lead": lead, "false_alarm_rate": x, "hit_rate": y}))
    if not out:
        return pd.DataFrame(columns=["signal", "lead", "false_alarm_rate", "hit_rate"])
    return pd.concat(out, ignore_index=True)


def aligned(runs: pd.DataFrame, signal_table: pd.DataFrame, *, curves: pd.DataFrame | None = None) -> pd.DataFrame:
    """Diverged runs' signals relative to their divergence step (steps_before = step - diverged_step,
    < 0) and to their time-matched threshold T at that step (ratio = value / threshold; > 1 is past
    it where high is bad, < 1 where low is bad; T never falls, so the first step past it is the
    first crossing of the running max): run_id, signal, lr, steps_before, ratio."""
    out = []
    for panel in _panels(runs, signal_table, curves):
        for i in np.flatnonzero(panel.runs.status.to_numpy() == "diverged"):
            steps = panel.measured(i)
            threshold = panel.sign * panel.threshold(i)[steps]
            if not np.isfinite(threshold).any():
                continue
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(threshold != 0, panel.sign * panel.values[i, steps] / threshold, np.nan)
            out.append(pd.DataFrame({"run_id": panel.runs.run_id.iloc[i], "signal": panel.signal, "lr": panel.lr,
                                     "steps_before": panel.steps[steps] - panel.runs.diverged_step.iloc[i],
                                     "ratio": ratio}))
    if not out:
        return pd.DataFrame(columns=["run_id", "signal", "lr", "steps_before", "ratio"])
    return pd.concat(out, ignore_index=True)
