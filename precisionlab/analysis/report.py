"""The numbers behind `precisionlab report`: a sweep's runs as stability tables.

Plots are drawn by `precisionlab.analysis.plots`, tables formatted by `precisionlab.analysis.tables`,
documents written by `precisionlab.analysis.render`;
this module only reads the store and does the arithmetic, so tests can check it
on runs with known values.

Definitions (the README's "Reading a report" repeats them):
  variant, ℓ₀, ℓ  what a row compares, the reference loss ln V and the capped final loss:
                precisionlab.analysis.labels.
  outcome       diverged (a NaN/Inf loss, or the run ended above ln V, or an early-stop rule
                predicted that and stopped it: precisionlab.train.outcomes), did not converge
                (completed, finite, but its final validation loss did not get NOT_CONVERGED
                of the way from ℓ₀ down to the reference's loss at its best LR: a stalled run,
                never a divergence), converged (the other completed runs). A blow-up the run
                came back from is a loss spike, not a divergence.
  branches      a run started from another run's checkpoint (init.parent) has metrics from its
                branch step on, and carries its parent's min val loss, spike count and divergence
                rule's window up to that step: its outcome is that of the whole curve.
  ℓ(η)          the mean of ℓ over the seeds at learning rate η.
  LR sensitivity  Wortsman et al. 2023: mean over the LR grid of ℓ(η) − min_η ℓ(η).
  best LR       argmin_η ℓ(η); seed std is the std (ddof=1) of the final
                validation loss over the completed runs at the best LR.
  intervals     95% confidence intervals from 3 seeds on (`precisionlab.analysis.stats`
                says which and why: t for means and paired differences, simultaneous t
                bounds over the grid's contrasts for LR sensitivity and ΔS), the seeds'
                range for 2 seeds (labelled a range: no level is claimed), Clopper–Pearson
                for divergence rates; each interval column has a `*_interval` column
                naming its kind.
  verdict       against the reference (the variant with the most bits, listed first), by these
                tests per variant, all Holm-adjusted together (one family: every test of every
                variant):
                  loss       the final validation loss at each LR both ran, paired by seed over
                             the seeds whose runs completed in both; paired t test on the
                             differences (stats.paired_t_p, the scale of the printed interval:
                             p < 0.05 exactly when its 95% interval excludes 0), not run below 3
                             pairs. The sign-flip permutation test cannot go below 2 / 2^n, 0.25 at
                             3 seeds: no loss difference could ever be detected with it.
                  best loss  the same on the best validation loss (min over evaluations, the
                             runs table's min_val_loss): a late spike or a bad last evaluation
                             does not hide what the run reached.
                  LR sensitivity  paired over seeds (the same seed gives the same initial weights
                             and batches in every variant; exact permutation test swapping the two
                             variants within seeds, with the interval of the difference ΔS); only
                             when the reference ran more than one LR: a one-LR grid has none.
                  divergence exact conditional test stratified by LR, two-sided.
                Diverged runs enter the loss tests not at all: they are the divergence test's. A
                diverged run counted at the bar ℓ₀ (capped_loss) would make the paired t test
                unsound: under no effect, with runs diverging at random (the edge of stability,
                where a format's numerics decide little), a variant whose 3 seeds all diverged
                against a reference whose 3 did not gives differences ℓ₀ − ℓ of nearly equal size,
                which the t test reads as a precise, huge effect while the exact divergence test
                rightly gives 0.1 (simulated: 6% of null sweeps got a false verdict that way, 1.3%
                without diverged runs in the loss tests; tests/analysis/test_verdict_family.py).
                LR sensitivity keeps ℓ₀ for diverged runs: its permutation test is exact whatever
                the losses' distribution.
                "less stable" / "more stable" when a Holm-adjusted p is below ALPHA in that
                direction (higher loss, larger ΔS or more divergence is worse), "mixed" when both,
                and the verdict names the tests that decided it (decided_by), with the difference,
                its interval and the adjusted p; else "no difference detected", with each test's
                numbers (for the loss, the LR whose test came closest). "too few seeds to test"
                when no test of the variant could reach an adjusted p below ALPHA with the runs it
                has (e.g. two seeds: no loss test, and no divergence count reaches it): a variant
                whose runs all diverged with too few seeds reads so, never "no difference
                detected". The headline says what each test can detect with these seeds
                (`detectability`).
Only finished runs (completed or diverged) enter the statistics; failed and
unfinished runs are counted apart and named in the report's notes.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from precisionlab.analysis import dose, warning
from precisionlab.analysis.diagnostics import labelled
from precisionlab.analysis.labels import (  # re-exported: the report's API names them
    bits_per_element,
    display_label,
    format_family,
    format_order,
    identical_to,
    label_runs,
    role_formats,
    short_format,
    variant_sorted,
)
from precisionlab.analysis.stats import (
    exact_binomial_ci,
    fisher_greater,
    holm_reachable,
    interval_text,
    mean_interval,
    paired_difference,
    paired_sensitivity,
    paired_t_p,
    seeds_needed,
    sensitivity_interval,
    smallest_permutation_p,
    smallest_stratified_p,
    stratified_exact_p,
    stratified_floor_p,
    t_detectable,
)
from precisionlab.store import DONE, ResultsStore, StoreError
from precisionlab.store.corpus import check_one_corpus

__all__ = ["Report", "ReportError", "ALPHA", "bits_per_element", "build", "by_lr", "by_variant", "compare", "compare_notes",
           "loss_tests", "reference_tests", "with_loss_tests",
           "filter_runs", "mark_convergence", "seed_matrix", "NOT_CONVERGED",
           "fisher_greater", "format_family", "format_order", "label_runs", "role_formats", "sharpness_by_step", "short_format"]

WHERE_COLUMNS = ("variant", "format", "lr", "seed", "status", "rounding", "model")
ALPHA = 0.05  # a verdict other than "no difference detected" needs a Holm-adjusted p below this
NOT_CONVERGED = 0.5  # a completed run must get this fraction of the way from ℓ₀ to the reference's best loss


class ReportError(ValueError):
    """Bad report input; the message is one line naming what is wrong and what is accepted."""


@dataclass
class Report:
    sweep: str                 # the sweep's name in the store
    store_path: str            # the results store: its absolute path, or its URL without the password
    info: dict[str, Any]       # the sweep's row: command, created, grid
    runs: pd.DataFrame         # one row per run: label_runs() columns + capped loss
    by_lr: pd.DataFrame        # one row per variant x LR (by_lr())
    by_variant: pd.DataFrame   # one row per variant (by_variant())
    curves: pd.DataFrame       # per-step metrics of the runs (run_id, step, split, loss, ...)
    sharpness: pd.DataFrame    # per-run sharpness values joined with variant/lr/seed (may be empty)
    sharpness_steps: pd.DataFrame  # sharpness_by_step(): mean ± std per metric x variant x step
    notes: list[str] = field(default_factory=list)  # caveats to print with the tables
    warning: pd.DataFrame = field(default_factory=pd.DataFrame)  # early_warning(): per signal (may be empty)
    warning_aligned: pd.DataFrame = field(default_factory=pd.DataFrame)  # aligned(): diverged runs' signals
    warning_windows: pd.DataFrame = field(default_factory=pd.DataFrame)  # windows(): AUC per signal x lead
    warning_roc: pd.DataFrame = field(default_factory=pd.DataFrame)  # roc(): ROC vertices per signal x lead
    # per branch (its run_id): the parent's train loss up to the branch step (step, loss), drawn faintly
    parent_curves: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["run_id", "step", "loss"]))
    diagnostics: pd.DataFrame = field(default_factory=pd.DataFrame)  # diagnostics rows + variant/lr/seed (may be empty)
    dose: dose.Dose | None = None  # dose-response, frontiers and the frontier sentence (analysis.dose)

    @property
    def reference(self) -> str | None:
        return None if self.by_variant.empty else str(self.by_variant.variant.iloc[0])

    def headline(self) -> str:
        """One sentence: which variants the tests find less or more stable than the reference, by which
        tests, and what the tests can detect with these seeds (`detectability`)."""
        table = self.by_variant
        if not table.finished.sum():
            return "no finished runs yet"
        if len(table) < 2:
            return f"one variant ({self.reference}): nothing to compare" if len(table) else "no finished runs"
        seeds = int(np.nanmax([table.paired_seeds.max(), table.loss_pairs.max(), 0]))
        text = f"Against {self.reference} (reference; {seeds} paired seed{'s' * (seeds != 1)}, Holm-adjusted α = {ALPHA:g}):"
        for verdict in ("less stable", "more stable", "mixed", "no difference detected", "too few seeds to test"):
            rows = table[table.verdict == verdict]
            if len(rows):
                text += f" {verdict.capitalize()}: " + "; ".join(f"{display_label(r.variant)} ({r.reason})"
                                                                  for r in rows.itertuples()) + "."
        return text + "".join(f" {line}" for line in detectability(table))


# --------------------------------------------------------------------------- tables


def by_lr(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per variant x LR: runs, finished, diverged, failed, diverged_frac (and its exact
    interval diverged_low/high), median_diverged_step, final_loss_mean/std/n (completed runs) and
    the mean's interval final_loss_low/high (its kind: final_loss_interval), lr_loss (ℓ(η)) and its
    interval, spikes (total)."""
    rows = []
    for (variant, lr), g in runs.groupby(["variant", "lr"], dropna=False):
        finished, diverged = g[g.status.isin(DONE)], g[g.status == "diverged"]
        losses = g[g.status == "completed"].final_val_loss.dropna().astype(float)
        rate_low, rate_high = exact_binomial_ci(len(diverged), len(finished))
        _, loss_low, loss_high, loss_kind = mean_interval(losses.to_numpy())
        _, lr_low, lr_high, lr_kind = mean_interval(finished.capped_loss.dropna().to_numpy())
        rows.append({
            "variant": variant, "lr": lr, "runs": len(g), "finished": len(finished),
            "diverged": len(diverged), "failed": int((g.status == "failed").sum()),
            "diverged_frac": len(diverged) / len(finished) if len(finished) else math.nan,
            "diverged_low": rate_low, "diverged_high": rate_high,
            "median_diverged_step": diverged.diverged_step.astype(float).median() if len(diverged) else math.nan,
            "final_loss_mean": losses.mean() if len(losses) else math.nan,
            "final_loss_std": losses.std(ddof=1) if len(losses) > 1 else math.nan,
            "final_loss_low": loss_low, "final_loss_high": loss_high, "final_loss_interval": loss_kind,
            "final_loss_n": len(losses),
            "lr_loss": finished.capped_loss.mean() if len(finished) else math.nan,
            "lr_loss_low": lr_low, "lr_loss_high": lr_high, "lr_loss_interval": lr_kind,
            "spikes": int(g.spikes.fillna(0).sum()),
        })
    columns = ["variant", "lr", "runs", "finished", "diverged", "failed", "diverged_frac", "diverged_low", "diverged_high",
               "median_diverged_step", "final_loss_mean", "final_loss_std", "final_loss_low", "final_loss_high",
               "final_loss_interval", "final_loss_n", "lr_loss", "lr_loss_low", "lr_loss_high", "lr_loss_interval",
               "spikes"]
    return variant_sorted(pd.DataFrame(rows, columns=columns), "lr")


def seed_matrix(runs: pd.DataFrame, variant: str, lrs: Sequence[float] | None = None) -> pd.DataFrame:
    """ℓ of `variant`'s finished runs as a seeds x LRs table (over `lrs`, default its own grid),
    only seeds finished at every LR: the rows the LR-sensitivity interval and the paired tests use."""
    mine = runs[(runs.variant == variant) & runs.status.isin(DONE)]
    table = mine.pivot_table(index="seed", columns="lr", values="capped_loss", aggfunc="mean")
    if lrs is not None:
        table = table.reindex(columns=list(lrs))
    return table.dropna()


def by_variant(table: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """`by_variant_estimates` with the tests against the reference, verdict and reason
    (`reference_tests`; the module docstring)."""
    return reference_tests(by_variant_estimates(table, runs), runs)[0]


def by_variant_estimates(table: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per variant from `by_lr(runs)`: runs, diverged/finished over the grid (and the
    rate's exact interval), LR sensitivity and its interval (both over the seeds that finished every
    LR, so the estimate lies in its interval; over all finished runs when no seed did), best LR, loss at the
    best LR (interval) and seed std, LRs without a divergence, initial loss; the estimates only
    (`by_variant` adds the tests against the reference)."""
    rows = []
    for variant, g in table.groupby("variant", sort=False):
        grid = g[g.finished > 0]
        best = grid.loc[grid.lr_loss.idxmin()] if len(grid) else None
        mine = runs[runs.variant == variant]
        sens, sens_low, sens_high, sens_kind = sensitivity_interval(seed_matrix(runs, variant).to_numpy())
        if math.isnan(sens) and len(grid):  # no seed finished every LR: the estimate of all runs, no interval
            sens = (grid.lr_loss - grid.lr_loss.min()).mean()
        rate_low, rate_high = exact_binomial_ci(int(g.diverged.sum()), int(g.finished.sum()))
        rows.append({
            "variant": variant, "runs": int(g.runs.sum()), "finished": int(g.finished.sum()),
            "diverged": int(g.diverged.sum()), "failed": int(g.failed.sum()),
            "diverged_frac": g.diverged.sum() / g.finished.sum() if g.finished.sum() else math.nan,
            "diverged_low": rate_low, "diverged_high": rate_high,
            "lr_sensitivity": sens, "lr_sensitivity_low": sens_low, "lr_sensitivity_high": sens_high,
            "lr_sensitivity_interval": sens_kind,
            "best_lr": best.lr if best is not None else math.nan,
            "best_lr_loss": best.final_loss_mean if best is not None else math.nan,
            "best_lr_loss_low": best.final_loss_low if best is not None else math.nan,
            "best_lr_loss_high": best.final_loss_high if best is not None else math.nan,
            "best_lr_loss_interval": best.final_loss_interval if best is not None else "",
            "seed_std": best.final_loss_std if best is not None else math.nan,
            "stable_lrs": int((grid.diverged == 0).sum()), "lrs": len(grid),
            "initial_loss": mine.initial_loss.astype(float).mean(),
            "spikes": int(g.spikes.sum()),
        })
    out = variant_sorted(pd.DataFrame(rows, columns=[
        "variant", "runs", "finished", "diverged", "failed", "diverged_frac", "diverged_low", "diverged_high",
        "lr_sensitivity", "lr_sensitivity_low", "lr_sensitivity_high", "lr_sensitivity_interval", "best_lr",
        "best_lr_loss", "best_lr_loss_low", "best_lr_loss_high", "best_lr_loss_interval", "seed_std", "stable_lrs", "lrs",
        "initial_loss", "spikes"]))
    return out


def with_loss_tests(table: pd.DataFrame, losses: pd.DataFrame) -> pd.DataFrame:
    """`by_lr`'s table with each variant's loss tests at that LR (`reference_tests`' second table):
    per measure (final_loss, min_loss) the difference from the reference, its interval and kind,
    and the Holm-adjusted p; NaN for the reference and where nothing was tested."""
    out = table.copy()
    for measure in MEASURES:
        mine = losses[losses.measure == measure].set_index(["variant", "lr"])
        keys = list(zip(out.variant, out.lr))
        for column, source in (("diff", "diff"), ("diff_low", "low"), ("diff_high", "high"),
                               ("diff_interval", "kind"), ("holm", "p_holm")):
            name = f"p_{measure}_holm" if column == "holm" else f"{measure}_{column}"
            values = mine[source].reindex(keys).to_numpy() if len(mine) else [math.nan] * len(out)
            out[name] = ["" if column == "diff_interval" and not isinstance(v, str) else v for v in values]
    return out


def reference_tests(out: pd.DataFrame, runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The family of tests against the reference (row 0 of `out`, by_variant's descriptive columns):
    (`out` with the tests' columns, Holm-adjusted p-values, verdict, reason and decided_by;
    `loss_tests(runs, reference)` with its Holm-adjusted p_holm). One Holm family holds every test
    of every variant: divergence, LR sensitivity and the loss tests at every LR, less the tests
    that cannot reach α with these runs (`stats.holm_reachable`: a divergence test where no run
    diverged, a 3-vs-3 divergence count, a ΔS permutation test over 3 seeds), which keep their raw p."""
    tests = pd.DataFrame([_against_reference(out, runs, i) for i in range(len(out))], columns=_TEST_COLUMNS,
                         index=out.index)
    out = pd.concat([out, tests], axis=1)
    m = len(out)
    reference = str(out.variant.iloc[0]) if m else ""
    losses = loss_tests(runs, reference)
    diverged_floor = [stratified_floor_p(divergence_strata(runs, v, reference)) if i else math.nan
                      for i, v in enumerate(out.variant)]  # given how many runs diverged at each LR
    adjusted = holm_reachable(
        np.concatenate([out.p_diverged.to_numpy(float), out.p_sensitivity.to_numpy(float), losses.p.to_numpy(float)]),
        np.concatenate([diverged_floor, out.p_sensitivity_smallest.to_numpy(float), losses.p_smallest.to_numpy(float)]))
    out["p_diverged_holm"], out["p_sensitivity_holm"] = adjusted[:m], adjusted[m:2 * m]
    out["p_diverged_floor"] = diverged_floor
    losses["p_holm"] = adjusted[2 * m:]
    summary = [_loss_summary(losses[losses.variant == v]) for v in out.variant]
    out = pd.concat([out, pd.DataFrame(summary, columns=_LOSS_SUMMARY, index=out.index)], axis=1)
    out["verdict"], out["reason"], out["decided_by"] = _verdicts(out, losses)
    return out, losses


MEASURES = {"final_loss": ("loss", "capped_loss"), "min_loss": ("best loss", "capped_min_loss")}
_LOSS_TEST_COLUMNS = ["variant", "lr", "measure", "pairs", "diff", "low", "high", "kind", "p", "p_smallest"]


def loss_tests(runs: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Each variant's final loss ℓ ("final_loss") and best loss ℓ_best ("min_loss") against the
    reference's at every LR both completed runs at, paired by seed over the seeds whose runs
    completed in both (diverged runs are the divergence test's: module docstring): pairs, the
    mean difference and its interval (stats.paired_difference), the paired t test's p
    (stats.paired_t_p: NaN below 3 pairs) and the smallest p it could reach (0: no floor)."""
    done = runs[runs.status == "completed"]
    ref = done[done.variant == reference]
    rows = []
    for (variant, lr), g in done[done.variant != reference].groupby(["variant", "lr"], sort=False):
        theirs_at_lr = ref[ref.lr == lr]
        if theirs_at_lr.empty:
            continue
        for measure, (_, column) in MEASURES.items():
            mine, theirs = (x.groupby("seed")[column].mean() for x in (g, theirs_at_lr))
            seeds = mine.index.intersection(theirs.index)
            pair = paired_difference(mine[seeds].to_numpy(), theirs[seeds].to_numpy())
            p = paired_t_p(mine[seeds].to_numpy() - theirs[seeds].to_numpy())
            rows.append([variant, lr, measure, pair["n"], pair["diff"], pair["low"], pair["high"], pair["kind"], p,
                         math.nan if math.isnan(p) else 0.0])
    return variant_sorted(pd.DataFrame(rows, columns=_LOSS_TEST_COLUMNS), "lr", "measure").reset_index(drop=True)


_LOSS_SUMMARY = [column for m in MEASURES for column in (
    f"{m}_lr", f"{m}_diff", f"{m}_diff_low", f"{m}_diff_high", f"{m}_diff_interval", f"p_{m}", f"p_{m}_holm",
    f"{m}_tests")] + ["loss_pairs"]


def _loss_summary(tests: pd.DataFrame) -> list:
    """One variant's loss tests in _LOSS_SUMMARY's columns: per measure, the LR whose test has the
    smallest Holm-adjusted p (the decisive or the closest one) and how many LRs were tested; and
    the most seeds any of its loss tests paired."""
    values = []
    for measure in MEASURES:
        mine = tests[(tests.measure == measure) & tests.p.notna()]
        if mine.empty:
            values += [math.nan] * 4 + [""] + [math.nan] * 2 + [0]
            continue
        r = mine.assign(size=-mine["diff"].abs()).sort_values(["p_holm", "p", "size"], kind="stable").iloc[0]
        values += [r.lr, r["diff"], r.low, r.high, r.kind, r.p, r.p_holm, len(mine)]
    return values + [int(tests.pairs.max()) if len(tests) else 0]


_TEST_COLUMNS = ["p_more_diverged", "p_diverged", "paired_seeds", "sensitivity_diff", "sensitivity_diff_low",
                 "sensitivity_diff_high", "sensitivity_diff_interval", "p_sensitivity", "best_loss_diff",
                 "best_loss_diff_low", "best_loss_diff_high", "best_loss_diff_interval", "p_best_loss",
                 "p_diverged_smallest", "p_sensitivity_smallest"]


def _against_reference(table: pd.DataFrame, runs: pd.DataFrame, i: int) -> list[float]:
    """Row i of `table` against row 0, the reference: divergence over the grid (exact test stratified
    by LR, one- and two-sided), LR sensitivity paired over the seeds both finished at every LR of the
    reference's grid (none on a one-LR grid: NaN), the best-LR loss ℓ paired over seeds (each at its
    own best LR; descriptive, not in the family), and the smallest p each of the two tests could give
    with these runs (for the headline's detectability check)."""
    if i == 0:
        return [math.nan] * 6 + [""] + [math.nan] * 4 + [""] + [math.nan] * 3
    row, ref = table.iloc[i], table.iloc[0]
    strata = divergence_strata(runs, row.variant, ref.variant)
    lrs = sorted(runs[runs.variant == ref.variant].lr.unique())
    mine, theirs = seed_matrix(runs, row.variant, lrs), seed_matrix(runs, ref.variant, lrs)
    seeds = mine.index.intersection(theirs.index) if len(lrs) > 1 else mine.index[:0]  # one LR: no sensitivity
    sens = paired_sensitivity(mine.loc[seeds].to_numpy(), theirs.loc[seeds].to_numpy())
    best = {"diff": math.nan, "low": math.nan, "high": math.nan, "kind": "", "p": math.nan}
    if not (math.isnan(row.best_lr) or math.isnan(ref.best_lr)):
        at_best = [runs[(runs.variant == v) & (runs.lr == lr) & runs.status.isin(DONE)].set_index("seed").capped_loss
                   for v, lr in ((row.variant, row.best_lr), (ref.variant, ref.best_lr))]
        paired = at_best[0].index.intersection(at_best[1].index)
        if len(paired):
            best = paired_difference(at_best[0][paired].to_numpy(), at_best[1][paired].to_numpy())
    return [stratified_exact_p(strata, "greater"), stratified_exact_p(strata), sens["n"], sens["diff"], sens["low"],
            sens["high"], sens["kind"], sens["p"], best["diff"], best["low"], best["high"], best["kind"], best["p"],
            smallest_stratified_p(strata) if strata else math.nan,
            smallest_permutation_p(sens["n"]) if sens["n"] else math.nan]


def divergence_strata(runs: pd.DataFrame, variant: str, reference: str) -> list[tuple[int, int, int, int]]:
    """(diverged, finished, reference diverged, reference finished) per LR both ran: the strata of
    the divergence test (divergence rates differ far more between LRs than between formats)."""
    done = runs[runs.status.isin(DONE)]
    counts = done.assign(div=done.status == "diverged").groupby(["variant", "lr"]).div.agg(["sum", "count"])
    strata = []
    for lr in sorted(set(done[done.variant == variant].lr) & set(done[done.variant == reference].lr)):
        (k, n), (kr, nr) = counts.loc[(variant, lr)], counts.loc[(reference, lr)]
        strata.append((int(k), int(n), int(kr), int(nr)))
    return strata


def detectability(table: pd.DataFrame, alpha: float = ALPHA) -> list[str]:
    """What each test of `by_variant`'s family (every divergence, ΔS and loss test, Holm-adjusted
    together) can reach with the paired seeds or runs it has. The exact tests have a floor: a
    warning when the smallest Holm-adjusted p a divergence or ΔS test can reach is not below
    `alpha` (over the family that can reach α: stats.holm_reachable), and for ΔS the paired seeds it would need. The loss tests
    (paired t) have none: the line says how large a difference, in standard deviations of its
    per-seed differences, Holm's strictest step needs (stats.t_detectable), or that they were not
    run (fewer than 3 paired seeds)."""
    if "p_sensitivity_smallest" not in table or len(table) < 2:
        return []
    m = len(table)
    smallest, floors = _smallest_p(table), _family_floors(table)
    loss_tests = len(smallest) - 2 * m
    reach = _reach(table, alpha)
    tests = int((floors < alpha).sum())  # the family: tests that can reach alpha (stats.holm_reachable)
    lines = []
    sens = [j for j in range(m, 2 * m) if not math.isnan(reach[j])]
    if sens and min(reach[j] for j in sens) >= alpha:
        j = min(sens, key=lambda j: reach[j])
        pairs = int(table.paired_seeds.iloc[j - m])
        needed = seeds_needed(smallest, j, alpha)
        lines.append(f"With {pairs} paired seed{'s' * (pairs != 1)}, the smallest adjusted p the LR-sensitivity test "
                     f"can reach is {reach[j]:.2g} (≥ α = {alpha:g}; {_family(tests)}): it cannot detect a "
                     "difference; " + (f"{needed} paired seeds would be needed." if needed else "far more seeds are needed."))
    div = [j for j in range(m) if not math.isnan(reach[j])]
    if div and min(reach[j] for j in div) >= alpha:
        lines.append(f"With these runs per LR, the smallest adjusted p the divergence test can reach is "
                     f"{min(reach[j] for j in div):.2g} (≥ α = {alpha:g}; {_family(tests)}): it cannot detect a "
                     "difference; run more seeds.")
    pairs = int(table.loss_pairs.iloc[1:].max()) if table.loss_pairs.iloc[1:].notna().any() else 0
    if loss_tests:
        fewest = int(table.loss_pairs.iloc[1:][table.final_loss_tests.iloc[1:] > 0].min())
        lines.append(f"The loss tests (paired t, no floor on p) detect a difference once it exceeds "
                     f"{t_detectable(fewest, tests, alpha):.3g} standard deviations of its per-seed differences at "
                     f"{fewest} paired seeds and {tests} tests (Holm's strictest step; later steps need less).")
    elif pairs:
        lines.append(f"With {pairs} paired seed{'s' * (pairs != 1)} the loss is not tested: the paired t test "
                     "needs 3; run more seeds.")
    return lines


def mark_convergence(runs: pd.DataFrame, table: pd.DataFrame, variants: pd.DataFrame) -> tuple[pd.DataFrame, ...]:
    """`runs` with an `outcome` column (module docstring), and `not_converged` counts added to the
    per-LR and per-variant tables; the bar is the reference's (first variant's) best-LR loss."""
    best = variants.best_lr_loss.iloc[0] if len(variants) else math.nan
    bar = runs.loss0 - NOT_CONVERGED * (runs.loss0 - best)
    completed = runs.status == "completed"
    stuck = completed & (runs.final_val_loss.astype(float) > bar)  # a NaN bar (no reference loss): converged
    runs = runs.assign(outcome=np.where(stuck, "did not converge", np.where(completed, "converged", runs.status)))
    per_lr = runs[stuck].groupby(["variant", "lr"]).size()
    table = table.assign(not_converged=[int(per_lr.get((v, lr), 0)) for v, lr in zip(table.variant, table.lr)])
    per_variant = runs[stuck].groupby("variant").size()
    variants = variants.assign(not_converged=[int(per_variant.get(v, 0)) for v in variants.variant])
    return runs, table, variants


def _verdicts(table: pd.DataFrame, losses: pd.DataFrame) -> tuple[list[str], list[str], list[str]]:
    """Each variant's verdict against row 0, the numbers behind it, and the tests that decided it
    (module docstring): "less stable" / "more stable" / "mixed" when Holm-adjusted tests find the
    variant worse / better / both; "no difference detected" when none does though one could have;
    "too few seeds to test" when no test of the variant could reach an adjusted p below ALPHA."""
    if table.empty:
        return [], [], []
    ref = table.iloc[0]
    reach = _reachable(table)
    verdicts, reasons, deciders = ["reference"], [""], [""]
    for i, row in enumerate(table.iloc[1:].itertuples(), 1):
        if row.finished == 0 or ref.finished == 0:
            verdicts.append("no data"), reasons.append(""), deciders.append("")
            continue
        tests = []  # (name, adjusted p, sign of the difference: + worse, text, raw p, size)
        for measure, (name, _) in MEASURES.items():
            mine = losses[(losses.variant == row.variant) & (losses.measure == measure) & losses.p.notna()]
            for t in mine.itertuples():
                delta = interval_text(t.diff, t.low, t.high, t.kind, "+.3f")
                tests.append((name, t.p_holm, np.sign(t.diff), f"{name} at lr {t.lr:g}: Δ {delta}, Holm p = {t.p_holm:.2g}",
                              t.p, -abs(t.diff)))
        if not math.isnan(row.p_sensitivity_holm):
            delta = interval_text(row.sensitivity_diff, row.sensitivity_diff_low, row.sensitivity_diff_high,
                                  row.sensitivity_diff_interval, "+.3f")
            tests.append(("LR sensitivity", row.p_sensitivity_holm, np.sign(row.sensitivity_diff),
                          f"ΔS = {delta}, Holm p = {row.p_sensitivity_holm:.2g}", row.p_sensitivity, 0))
        if not math.isnan(row.p_diverged_holm):
            tests.append(("divergence", row.p_diverged_holm, np.sign(row.diverged_frac - ref.diverged_frac),
                          f"diverged {row.diverged}/{row.finished} vs {ref.diverged}/{ref.finished}, "
                          f"Holm p = {row.p_diverged_holm:.2g}", row.p_diverged, 0))
        decided = [t for t in tests if t[1] < ALPHA and t[2] != 0]
        worse, better = any(t[2] > 0 for t in decided), any(t[2] < 0 for t in decided)
        verdicts.append("mixed" if worse and better else "less stable" if worse else "more stable" if better
                        else "no difference detected" if reach[i] else "too few seeds to test")
        names = list(dict.fromkeys(t[0] for t in decided))
        deciders.append(", ".join(names))
        why = [t[3] for t in decided]
        for name in dict.fromkeys(t[0] for t in tests):  # each test that decided nothing: its closest case
            undecided = [t for t in tests if t[0] == name and t not in decided]
            if undecided and not (name in names and name in ("loss", "best loss")):
                closest = min(undecided, key=lambda t: (t[1], t[4], t[5]))  # as _loss_summary picks
                lrs = len(undecided)
                why.append(closest[3] + (f" (the closest of {lrs} LRs)" if lrs > 1 else ""))
        if row.paired_seeds == 0 and table.lrs.max() > 1 and math.isnan(row.p_sensitivity_holm):
            why.append("no seed finished every LR in both: LR sensitivity not compared")
        if not any(t[0] in ("loss", "best loss") for t in tests):
            pairs = int(row.loss_pairs)
            why.append("loss not tested: " + (f"at most {pairs} seed{'s' * (pairs != 1)} completed in both at an LR "
                                               "(the paired t test needs 3)" if pairs else "no seed completed in both"))
        named = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)
        reasons.append((f"by {named}: " if names else "") + "; ".join(why))
    return verdicts, reasons, deciders


def _family(tests: int) -> str:
    """How many tests Holm adjusts over: those that can reach α (stats.holm_reachable)."""
    return f"Holm over the {tests} test{'s' * (tests != 1)} that can reach α" if tests else "no test here can reach α"


def _smallest_p(table: pd.DataFrame) -> np.ndarray:
    """The smallest raw p each test of the family can reach with these runs, in the family's order:
    the divergence tests, the ΔS tests (a row each, NaN where not run), then one 0 per loss test
    (a t test has no floor)."""
    loss_tests = int(table.final_loss_tests.fillna(0).sum() + table.min_loss_tests.fillna(0).sum())
    return np.concatenate([table.p_diverged_smallest.to_numpy(float), table.p_sensitivity_smallest.to_numpy(float),
                           np.zeros(loss_tests)])


def _family_floors(table: pd.DataFrame) -> np.ndarray:
    """`_smallest_p` given what happened: a divergence test's floor is also bounded by how many runs
    diverged at each LR (stats.stratified_floor_p: 1 when none did). The family is the tests whose
    floor is below α (stats.holm_reachable), as `reference_tests` adjusts them."""
    floors = _smallest_p(table)
    if "p_diverged_floor" in table:
        m = len(table)
        floors[:m] = np.fmax(floors[:m], table.p_diverged_floor.to_numpy(float))
    return floors


def _reach(table: pd.DataFrame, alpha: float) -> np.ndarray:
    """The smallest adjusted p each test of the family can reach with these runs (`_smallest_p`'s
    order): every test at its floor, Holm over those that can reach alpha (stats.holm_reachable;
    Holm is monotone in every p, so no outcome adjusts lower)."""
    smallest, floors = _smallest_p(table), _family_floors(table)
    return holm_reachable(np.fmax(smallest, floors), floors, alpha)


def _reachable(table: pd.DataFrame, alpha: float = ALPHA) -> list[bool]:
    """Per variant: can any of its tests reach a Holm-adjusted p below alpha with these runs (`_reach`)?"""
    m, reach = len(table), _reach(table, alpha)
    loss_tests = table.final_loss_tests.fillna(0) + table.min_loss_tests.fillna(0)
    return [bool(loss_tests.iat[i] > 0 or reach[i] < alpha or reach[m + i] < alpha) for i in range(m)]


def sharpness_by_step(sharpness: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and count of each sharpness metric (with its parameters) per variant and step."""
    columns = ["metric", "params", "variant", "step", "mean", "std", "n"]
    if sharpness.empty:
        return pd.DataFrame(columns=columns)
    grouped = sharpness.groupby(["metric", "params", "variant", "step"]).value.agg(["mean", "std", "count"])
    out = grouped.reset_index().rename(columns={"count": "n"})[columns]
    return variant_sorted(out, "metric", "params", "step")


def _params_label(params: Any) -> str:
    if not isinstance(params, dict) or not params:
        return ""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items()))


# --------------------------------------------------------------------------- filters


def filter_runs(runs: pd.DataFrame, where: Sequence[str]) -> pd.DataFrame:
    """Keep the runs every `where` expression accepts: `key=v1,v2` (membership) on
    variant, format, lr, seed, status, rounding or model, or a comparison expression over
    those columns (`lr <= 1e-2 and format != 'e8m3'`; see `_mask`)."""
    for expression in where:
        simple = re.fullmatch(r"\s*(\w+)\s*=\s*([^=<>!].*)", expression)
        if simple:
            key, values = simple[1], [v.strip() for v in simple[2].split(",")]
            if key not in WHERE_COLUMNS:
                raise ReportError(f"--where {expression!r}: unknown column {key!r}; accepted: {', '.join(WHERE_COLUMNS)}")
            column = runs[key]
            if key in ("lr", "seed"):
                try:
                    wanted = [float(v) for v in values]
                except ValueError:
                    raise ReportError(f"--where {expression!r}: {key} takes numbers, e.g. {key}=1e-3,3e-3") from None
                keep = np.zeros(len(runs), bool)
                for v in wanted:
                    keep |= np.isclose(column.astype(float), v, rtol=1e-9, atol=0)
            else:
                keep = column.astype(str).isin(values)
            runs = runs[keep]
            continue
        try:
            keep = _mask(ast.parse(expression.strip(), mode="eval").body, runs)
            runs = runs[np.asarray(keep, dtype=bool)]
        except (SyntaxError, ValueError, TypeError) as err:
            problem = err.msg if isinstance(err, SyntaxError) else str(err).splitlines()[0] if str(err) else ""
            raise ReportError(f"--where {expression!r} is not a usable filter ({type(err).__name__}: {problem}); "
                              f"accepted: key=v1,v2 or comparisons (==, !=, <, <=, >, >=, in, not in) of "
                              f"{', '.join(WHERE_COLUMNS)} with numbers or quoted strings, joined by and/or/not, "
                              f"e.g. \"lr <= 1e-2 and format != 'e8m3'\"") from None
    return runs


_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge}


def _mask(node: ast.expr, runs: pd.DataFrame):
    """Evaluate a --where expression tree over `runs`, allowing only column names, literals,
    comparisons, `in` / `not in` lists and and/or/not: nothing is ever called, looked up as
    an attribute or indexed, so a filter cannot run code (pandas' `query` would)."""
    if isinstance(node, ast.BoolOp):
        masks = [np.asarray(_mask(v, runs), dtype=bool) for v in node.values]
        return np.logical_and.reduce(masks) if isinstance(node.op, ast.And) else np.logical_or.reduce(masks)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return ~np.asarray(_mask(node.operand, runs), dtype=bool)
    if isinstance(node, ast.Compare):
        keep, left = np.ones(len(runs), bool), _operand(node.left, runs)
        for op, right_node in zip(node.ops, node.comparators):
            right = _operand(right_node, runs)
            if isinstance(op, (ast.In, ast.NotIn)):
                if not isinstance(right, list) or isinstance(left, list) or any(isinstance(v, list) for v in right):
                    raise ValueError("in / not in take a list of numbers or strings after a column, e.g. format in ['e8m7', 'e8m3']")
                found = pd.Series(left).isin(right).to_numpy()
                keep &= found if isinstance(op, ast.In) else ~found
            elif type(op) in _COMPARE:
                if isinstance(left, list) or isinstance(right, list):  # numpy would compare row by row position
                    raise ValueError(f"{type(op).__name__} compares a column with a number or string, not a list; "
                                     "for a list use in [...]")
                keep &= np.asarray(_COMPARE[type(op)](left, right), dtype=bool)
            else:
                raise ValueError(f"unsupported comparison {type(op).__name__}")
            left = right
        return keep
    raise ValueError(f"unsupported expression {ast.unparse(node)!r}")


def _operand(node: ast.expr, runs: pd.DataFrame):
    """A column (as an array), a number or string, or a list of them."""
    if isinstance(node, ast.Name):
        if node.id not in WHERE_COLUMNS:
            raise ValueError(f"unknown column {node.id!r}")
        return runs[node.id].to_numpy()
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        return -_operand(node.operand, runs)
    if isinstance(node, (ast.List, ast.Tuple)) and not any(isinstance(item, ast.Name) for item in node.elts):
        return [_operand(item, runs) for item in node.elts]
    raise ValueError(f"unsupported expression {ast.unparse(node)!r}")


# --------------------------------------------------------------------------- the whole report


def _one_corpus(tables: list[pd.DataFrame], where: str) -> None:
    """ReportError if runs of one data config in `tables` trained on different data (precisionlab.store.corpus)."""
    try:
        check_one_corpus([row for runs in tables for row in zip(runs.run_id, runs.config, runs.meta)], where)
    except StoreError as err:
        raise ReportError(str(err)) from None


def build(store: ResultsStore, sweep: str | None = None, where: Sequence[str] = (),
          margin: float = dose.DEFAULT_MARGIN) -> Report:
    """The report of `sweep` (default: the latest) in `store`, over the runs `where` keeps; `margin`
    is δ of the dose-response frontier (analysis.dose), in nats per byte."""
    try:
        margin = dose.check_margin(margin)
    except ValueError as err:
        raise ReportError(str(err)) from None
    try:
        name = store.sweep_name(sweep)
    except StoreError as err:
        raise ReportError(str(err)) from None
    runs = label_runs(store.runs(sweep=name))
    _one_corpus([runs], f"sweep {name!r}")
    total = len(runs)
    runs = filter_runs(runs, where)
    if runs.empty:
        raise ReportError(f"sweep {name!r} has no runs" + (f" matching --where {' and '.join(where)}" if where else "")
                          + f" ({total} in all)")
    notes = []
    if where:
        notes.append(f"filtered with --where {' and '.join(where)}: {len(runs)} of {total} runs")
    unfinished = runs[~runs.status.isin(DONE)]
    for status, count in unfinished.status.value_counts().items():
        how = {"failed": "their errors: ResultsStore(path).runs(status='failed').error",
               "running": "still running, or interrupted: rerun the sweep command to finish them"}
        notes.append(f"{count} run(s) {status}, not in the statistics ("
                     + how.get(status, "rerun the sweep command to finish them") + ")")
    table = by_lr(runs)
    variants, losses = reference_tests(by_variant_estimates(table, runs), runs)
    table = with_loss_tests(table, losses)
    runs, table, variants = mark_convergence(runs, table, variants)
    reference = str(variants.variant.iloc[0]) if len(variants) else ""
    twins = [v for v in variants.variant.iloc[1:] if identical_to(runs, v, reference)]
    if twins:  # its tests compare the reference with itself: say why it shows no difference
        notes.append(f"{', '.join(twins)} ended bit-identical to {reference} in every run (the same losses at every LR "
                     "and seed): the cast changes no bit at this scale")
    grids = {v: tuple(sorted(g.lr)) for v, g in table[table.finished > 0].groupby("variant")}
    if len(set(grids.values())) > 1:
        notes.append("variants were run over different LR grids: their LR sensitivities are not comparable")
    branches = runs[runs.parent_run_id.notna()] if "parent_run_id" in runs else runs.iloc[:0]
    if len(branches):
        notes.append(f"{len(branches)} run(s) branch from another run's checkpoint (init.parent): their curves start "
                     "after the branch step; spikes and min val loss include the parent's steps up to it")
    ids = list(runs.run_id)
    curves = store.metrics(run_ids=ids)
    sharp = store.sharpness(run_ids=ids)
    if not sharp.empty:
        sharp = sharp.assign(params=[_params_label(p) for p in sharp.params])
        sharp = sharp.merge(runs[["run_id", "variant", "lr", "seed", "status"]], on="run_id")
    diagnostics = labelled(store.diagnostics(run_ids=ids), runs)
    sweeps = store.sweeps()
    info = sweeps[sweeps.name == name].iloc[0].to_dict()
    signal_table = warning.signals(curves, sharp, diagnostics)
    warned = {}
    if (runs.status == "diverged").any():  # given the curves, bit-identical runs count once
        warned = {"warning": warning.early_warning(runs, signal_table, curves=curves),
                  "warning_aligned": warning.aligned(runs, signal_table, curves=curves),
                  "warning_windows": warning.windows(runs, signal_table, curves=curves),
                  "warning_roc": warning.roc(runs, signal_table, curves=curves)}
    return Report(sweep=name, store_path=store.location, info=info, runs=runs, by_lr=table, by_variant=variants,
                  curves=curves, sharpness=sharp, sharpness_steps=sharpness_by_step(sharp), notes=notes, **warned,
                  diagnostics=diagnostics, dose=dose.study(runs, variants, margin),
                  parent_curves=_parent_curves(store, branches))


def _parent_curves(store: ResultsStore, branches: pd.DataFrame) -> pd.DataFrame:
    """Each branch's parent's train loss up to its branch step, under the branch's run_id (the parent
    may be in no sweep of this report; a parent the store lacks draws nothing)."""
    columns = ["run_id", "step", "loss"]
    if branches.empty:
        return pd.DataFrame(columns=columns)
    train = store.metrics(run_ids=sorted(set(branches.parent_run_id)), split="train")
    parts = [train[(train.run_id == b.parent_run_id) & (train.step <= b.branch_step)].assign(run_id=b.run_id)[columns]
             for b in branches.itertuples()]
    return pd.concat(parts, ignore_index=True)


def compare(a: Report, b: Report) -> pd.DataFrame:
    """One row per variant of either sweep: each sweep's diverged k/n, LR sensitivity and best-LR
    loss with their intervals, best LR (columns suffixed _a, _b); the differences b - a of LR
    sensitivity (sensitivity_diff, over the LRs both ran) and of the best-LR loss (loss_diff), paired
    by seed over the seeds both ran (same seed: same initial weights and batches), with intervals and
    permutation p; and the one-sided p of each diverging more than the other (exact, stratified by LR)."""
    _one_corpus([a.runs, b.runs], f"comparing sweeps {a.sweep!r} and {b.sweep!r}")
    keep = ["variant", "finished", "diverged", "diverged_frac", "lr_sensitivity", "lr_sensitivity_low",
            "lr_sensitivity_high", "lr_sensitivity_interval", "best_lr", "best_lr_loss", "best_lr_loss_low",
            "best_lr_loss_high", "best_lr_loss_interval", "seed_std"]
    table = a.by_variant[keep].merge(b.by_variant[keep], on="variant", how="outer", suffixes=("_a", "_b"))
    table = variant_sorted(table)
    rows = []
    for r in table.itertuples():
        both = not (pd.isna(r.finished_a) or pd.isna(r.finished_b))
        rows.append(_between_sweeps(a.runs, b.runs, r.variant, r.best_lr_a, r.best_lr_b) if both else
                    [math.nan] * 3 + [""] + [math.nan] * 4 + [""] + [math.nan] * 3)
    return pd.concat([table, pd.DataFrame(rows, columns=_COMPARE_COLUMNS, index=table.index)], axis=1)


_COMPARE_COLUMNS = ["sensitivity_diff", "sensitivity_diff_low", "sensitivity_diff_high", "sensitivity_diff_interval",
                    "p_sensitivity", "loss_diff", "loss_diff_low", "loss_diff_high", "loss_diff_interval", "p_loss",
                    "p_a_more_diverged", "p_b_more_diverged"]


def _between_sweeps(runs_a: pd.DataFrame, runs_b: pd.DataFrame, variant: str, best_a: float, best_b: float) -> list:
    """One variant in two sweeps: _COMPARE_COLUMNS (b minus a, paired by seed)."""
    tagged = pd.concat([runs_a[runs_a.variant == variant].assign(variant="a"),
                        runs_b[runs_b.variant == variant].assign(variant="b")], ignore_index=True)
    lrs = sorted(set(tagged[tagged.variant == "a"].lr) & set(tagged[tagged.variant == "b"].lr))
    mine, theirs = seed_matrix(tagged, "b", lrs), seed_matrix(tagged, "a", lrs)
    seeds = mine.index.intersection(theirs.index)
    sens = paired_sensitivity(mine.loc[seeds].to_numpy(), theirs.loc[seeds].to_numpy()) if lrs else {}
    loss = {}
    if not (math.isnan(best_a) or math.isnan(best_b)):
        done = tagged[tagged.status == "completed"]
        at_best = [done[(done.variant == side) & (done.lr == lr)].set_index("seed").final_val_loss.astype(float)
                   for side, lr in (("b", best_b), ("a", best_a))]
        paired = at_best[0].index.intersection(at_best[1].index)
        if len(paired):
            loss = paired_difference(at_best[0][paired].to_numpy(), at_best[1][paired].to_numpy())
    strata = divergence_strata(tagged, "a", "b")
    values = [sens.get(k, math.nan) for k in ("diff", "low", "high")] + [sens.get("kind", ""), sens.get("p", math.nan)]
    values += [loss.get(k, math.nan) for k in ("diff", "low", "high")] + [loss.get("kind", ""), loss.get("p", math.nan)]
    flipped = [(kr, nr, k, n) for k, n, kr, nr in strata]
    return values + [stratified_exact_p(strata, "greater") if strata else math.nan,
                     stratified_exact_p(flipped, "greater") if strata else math.nan]


def compare_notes(a: Report, b: Report) -> list[str]:
    """What makes the two sweeps' numbers not directly comparable."""
    notes = []
    grids = [sorted(r.runs.lr.dropna().unique()) for r in (a, b)]
    if grids[0] != grids[1]:
        notes.append(f"the sweeps ran different LR grids ({a.sweep}: {', '.join(f'{x:g}' for x in grids[0])}; "
                     f"{b.sweep}: {', '.join(f'{x:g}' for x in grids[1])}): LR sensitivities are not comparable")
    flat = [pd.json_normalize(list(r.runs.config)).astype(str) for r in (a, b)]
    for key in ("train.steps", "model.n_layer", "model.n_embd", "data.source"):
        values = [sorted(set(f[key])) if key in f else ["None"] for f in flat]
        if values[0] != values[1]:
            notes.append(f"{key} differs ({a.sweep}: {', '.join(values[0])}; {b.sweep}: {', '.join(values[1])})")
    return notes
