"""Early warning: does a per-step metric cross a threshold before a run diverges, and how early?

The paper's use of sharpness (and Wortsman et al.'s of attention logits, Su et al.'s of gradient
fidelity) is a claim about lead time. For each per-step signal a sweep recorded (the gradient
norm of every step, sharpness with `sharpness.every`, numerical diagnostics with
`diagnostics.every`), per learning rate (signals scale with it: sharpness sits near 2/η at the
edge of stability):

  threshold     calibrated on the runs that did not diverge at that LR: the largest value any of
                them reached (the smallest, for signals where low is bad, e.g. gradient cosine),
                so every completed run stays on the safe side of it by construction
  warned        a diverged run whose signal crossed the threshold at some step before its
                divergence step; its lead time is the divergence step minus the first crossing
  false alarms  completed runs that cross the threshold of the other completed runs at their LR
                (leave-one-out: each run is judged by a threshold it did not set), with its
                exact 95% interval

The table gives, per signal, the diverged runs that had a threshold and data, how many were warned
at least `lead` steps ahead (with Clopper-Pearson intervals), the median lead time, and the
false-alarm rate; `aligned` puts every diverged run's signal on one axis, steps before divergence.
A signal measured every N steps warns at the first measurement after its crossing.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from precisionlab.analysis.stats import exact_binomial_ci

__all__ = ["signals", "early_warning", "aligned", "LOW_IS_BAD", "DEFAULT_LEAD"]

LOW_IS_BAD = ("grad_cosine",)  # signals whose warning is a drop (their name ends so)
DEFAULT_LEAD = 10              # steps of warning that count as "ahead"
COLUMNS = ["signal", "diverged", "calibrated", "warned", "warned_low", "warned_high", "median_lead",
           "completed", "false_alarms", "false_alarm_low", "false_alarm_high"]


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


def _low_is_bad(signal: str) -> bool:
    return signal.endswith(LOW_IS_BAD)


def _before_stopping(runs: pd.DataFrame, signal_table: pd.DataFrame) -> pd.DataFrame:
    """The signal rows with their run's lr, status and diverged_step, and only what a run showed
    before it stopped: a diverged run's last step is its divergence."""
    values = signal_table.join(runs.set_index("run_id")[["lr", "status", "diverged_step"]], on="run_id")
    return values[(values.status != "diverged") | (values.step < values.diverged_step)]


def _worst(completed: pd.DataFrame, sign: float) -> pd.Series:
    """run_id -> each run's worst value of the signal, signed (`sign`) so that larger is worse."""
    return (sign * completed.value).groupby(completed.run_id).max()


def _threshold(worst: pd.Series, without: str | None = None) -> float:
    """The largest signed worst value (of the runs but `without`); NaN for none."""
    others = worst.drop(without) if without is not None else worst
    return float(others.max()) if len(others) else math.nan


def early_warning(runs: pd.DataFrame, signal_table: pd.DataFrame, lead: int = DEFAULT_LEAD) -> pd.DataFrame:
    """Per signal: warned fraction of diverged runs (at least `lead` steps ahead), median lead time
    and leave-one-out false-alarm rate on completed runs (module docstring). `runs` needs run_id,
    lr, status and diverged_step."""
    rows = []
    for signal, before in _before_stopping(runs, signal_table).groupby("signal", sort=True):
        sign = -1.0 if _low_is_bad(signal) else 1.0
        leads, n_diverged, n_calibrated, alarms, n_completed = [], 0, 0, 0, 0
        for lr, at_lr in before.groupby("lr"):
            worst = _worst(at_lr[at_lr.status == "completed"], sign)
            for run_id in worst.index:
                threshold = _threshold(worst, without=run_id)
                if not math.isnan(threshold):
                    n_completed += 1
                    alarms += worst[run_id] > threshold
            threshold = _threshold(worst)
            for run_id, run in at_lr[at_lr.status == "diverged"].groupby("run_id"):
                n_diverged += 1
                if math.isnan(threshold):
                    continue
                n_calibrated += 1
                crossed = run[sign * run.value > threshold]
                if len(crossed):
                    leads.append(int(run.diverged_step.iloc[0] - crossed.step.min()))
        # diverged runs that stopped before the signal's first measurement have no data: not counted
        warned = sum(lead_time >= lead for lead_time in leads)
        w_low, w_high = exact_binomial_ci(warned, n_calibrated)
        f_low, f_high = exact_binomial_ci(alarms, n_completed)
        rows.append({"signal": signal, "diverged": n_diverged, "calibrated": n_calibrated, "warned": warned,
                     "warned_low": w_low, "warned_high": w_high,
                     "median_lead": float(np.median(leads)) if leads else math.nan,
                     "completed": n_completed, "false_alarms": int(alarms),
                     "false_alarm_low": f_low, "false_alarm_high": f_high})
    return pd.DataFrame(rows, columns=COLUMNS)


def aligned(runs: pd.DataFrame, signal_table: pd.DataFrame) -> pd.DataFrame:
    """Diverged runs' signals relative to their divergence step (steps_before = step - diverged_step,
    <= 0) and to their LR's threshold (ratio = value / threshold; > 1 is past it where high is bad,
    < 1 where low is bad): run_id, signal, lr, steps_before, ratio."""
    out = []
    for (signal, lr), at_lr in _before_stopping(runs, signal_table).groupby(["signal", "lr"]):
        sign = -1.0 if _low_is_bad(signal) else 1.0
        worst = _worst(at_lr[at_lr.status == "completed"], sign)
        if worst.empty:
            continue
        threshold = sign * _threshold(worst)
        diverged = at_lr[at_lr.status == "diverged"]
        out.append(pd.DataFrame({"run_id": diverged.run_id, "signal": signal, "lr": lr,
                                 "steps_before": diverged.step - diverged.diverged_step,
                                 "ratio": diverged.value / threshold if threshold else np.nan}))
    if not out:
        return pd.DataFrame(columns=["run_id", "signal", "lr", "steps_before", "ratio"])
    return pd.concat(out, ignore_index=True)
