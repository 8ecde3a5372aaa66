"""A sweep's runs as descriptive tables: per variant and LR, per variant, and per step.

Pure functions of the labelled runs (`labels.label_runs` plus capped_loss); no store access and no
tests against the reference (`precisionlab.analysis.verdicts` adds those).

Definitions (the README's "Reading a report" repeats them):
  outcome       diverged (a NaN/Inf loss, or the run ended above ln V, or an early-stop rule
                predicted that and stopped it: precisionlab.train.outcomes), did not converge
                (completed, finite, but its final validation loss did not get NOT_CONVERGED
                of the way from ℓ₀ down to the reference's loss at its best LR: a stalled run,
                never a divergence), converged (the other completed runs). A blow-up the run
                came back from is a loss spike, not a divergence.
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
Only finished runs (completed or diverged) enter the statistics; failed and unfinished runs are
counted apart.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from precisionlab.analysis.labels import variant_sorted
from precisionlab.analysis.stats import exact_binomial_ci, mean_interval, sensitivity_interval
from precisionlab.store import DONE

__all__ = ["NOT_CONVERGED", "by_lr", "seed_matrix", "by_variant_estimates", "mark_convergence", "sharpness_by_step"]

NOT_CONVERGED = 0.5  # a completed run must get this fraction of the way from ℓ₀ to the reference's best loss


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


def by_variant_estimates(table: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per variant from `by_lr(runs)`: runs, diverged/finished over the grid (and the
    rate's exact interval), LR sensitivity and its interval (both over the seeds that finished every
    LR, so the estimate lies in its interval; over all finished runs when no seed did), best LR, loss at the
    best LR (interval) and seed std, LRs without a divergence, initial loss; the estimates only
    (`verdicts.by_variant` adds the tests against the reference)."""
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


def sharpness_by_step(sharpness: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and count of each sharpness metric (with its parameters) per variant and step."""
    columns = ["metric", "params", "variant", "step", "mean", "std", "n"]
    if sharpness.empty:
        return pd.DataFrame(columns=columns)
    grouped = sharpness.groupby(["metric", "params", "variant", "step"]).value.agg(["mean", "std", "count"])
    out = grouped.reset_index().rename(columns={"count": "n"})[columns]
    return variant_sorted(out, "metric", "params", "step")
