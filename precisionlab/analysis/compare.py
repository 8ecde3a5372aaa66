"""Two sweeps side by side (`precisionlab report --compare A B`): each variant's numbers in both,
and the differences b − a paired by seed (the same seed gives the same initial weights and batches
in both sweeps), with their intervals and tests.
"""

from __future__ import annotations

import math

import pandas as pd

from precisionlab.analysis.estimates import seed_matrix
from precisionlab.analysis.labels import variant_sorted
from precisionlab.analysis.report import Report
from precisionlab.analysis.runs import one_corpus
from precisionlab.analysis.stats import paired_difference, paired_sensitivity, stratified_exact_p
from precisionlab.analysis.verdicts import divergence_strata

__all__ = ["compare", "compare_notes"]


def compare(a: Report, b: Report) -> pd.DataFrame:
    """One row per variant of either sweep: each sweep's diverged k/n, LR sensitivity and best-LR
    loss with their intervals, best LR (columns suffixed _a, _b); the differences b - a of LR
    sensitivity (sensitivity_diff, over the LRs both ran) and of the best-LR loss (loss_diff), paired
    by seed over the seeds both ran (same seed: same initial weights and batches), with intervals and
    permutation p; and the one-sided p of each diverging more than the other (exact, stratified by LR)."""
    one_corpus([a.runs, b.runs], f"comparing sweeps {a.sweep!r} and {b.sweep!r}")
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

