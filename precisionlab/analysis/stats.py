"""Intervals and tests for comparing recipes over seeds: bootstrap, paired sign-flip, exact binomial.

Seeds pair across recipes (the same seed gives the same initial weights and batch order whatever
the precision), so a recipe is compared with the reference seed by seed:

  `paired_difference(x, ref)`  mean of x - ref over the pairs, a percentile-bootstrap 95% interval
                               and the two-sided p-value of the exact sign-flip permutation test
                               (every one of the 2^n sign patterns when n <= 16)
  `bootstrap_ci(x)`            mean and percentile-bootstrap interval of one sample
  `exact_binomial_ci(k, n)`    Clopper-Pearson interval of a proportion (divergence rates)
  `holm(p_values)`             Holm-Bonferroni adjustment, for verdicts over many comparisons
  `sensitivity_interval(L)`    LR sensitivity of a (seeds x LRs) matrix of losses and its bootstrap
                               interval, seeds resampled as rows (a seed's runs at every LR share
                               its initial weights and batches)
  `paired_sensitivity(L, R)`   the difference of two variants' LR sensitivities over paired seeds:
                               bootstrap interval (rows resampled jointly) and the exact p-value of
                               swapping the variants within seeds
  `fisher_two_sided(k, n, kr, nr)`  Fisher's exact test of two divergence counts
  `recipe_comparison(runs, reference)`  all of these per recipe and learning rate, from a store's runs

Bootstrap intervals are Hesterberg's expanded percentile intervals (The American Statistician
69(4), 2015): the plain percentile interval covers less than its level for small samples (its
spread is the sample's, divided by n instead of n - 1, and normal rather than t quantiles), so the
quantiles taken are those of level Φ(sqrt(n / (n - 1)) t_{n-1}) instead; with 2 seeds that is the
whole bootstrap range. The smallest achievable sign-flip p-value is 2 / 2^n (0.125 for 4 pairs):
"no difference detected" is then the only verdict the data can give unless n grows.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["bootstrap_ci", "paired_difference", "sign_flip_p", "exact_binomial_ci", "holm", "recipe_comparison",
           "lr_sensitivity", "sensitivity_interval", "paired_sensitivity", "fisher_greater", "fisher_two_sided", "LEVEL"]

LEVEL = 0.95
_EXACT_PAIRS = 16  # sign-flip test enumerates every pattern up to this many pairs


def _expanded_interval(boot: np.ndarray, n: int, level: float) -> tuple[float, float]:
    """The expanded percentile interval of bootstrap replicates `boot` of a statistic of n samples."""
    tail = float(stats.norm.cdf(math.sqrt(n / (n - 1)) * stats.t.ppf((1 - level) / 2, n - 1)))
    return float(np.quantile(boot, tail)), float(np.quantile(boot, 1 - tail))


def bootstrap_ci(values, level: float = LEVEL, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` and its expanded percentile-bootstrap interval; NaNs
    for no values, (mean, mean, mean) for one."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    if x.size == 1:
        return float(x[0]), float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    return (float(x.mean()), *_expanded_interval(means, x.size, level))


def sign_flip_p(differences, n_random: int = 100_000, seed: int = 0) -> float:
    """Two-sided p-value of the sign-flip permutation test of mean(differences) = 0: exact over all
    2^n sign patterns for n <= 16, else from `n_random` random patterns."""
    d = np.asarray(differences, dtype=float)
    if d.size == 0:
        return math.nan
    observed = abs(d.mean())
    if d.size <= _EXACT_PAIRS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(n_random, d.size))
    flipped = np.abs((signs * d).mean(axis=1))
    return float(np.mean(flipped >= observed - 1e-12 * max(observed, 1.0)))


def paired_difference(x, reference, level: float = LEVEL) -> dict:
    """x - reference over paired observations: n, mean, bootstrap interval, sign-flip p-value."""
    d = np.asarray(x, dtype=float) - np.asarray(reference, dtype=float)
    mean, low, high = bootstrap_ci(d, level)
    return {"n": int(d.size), "diff": mean, "low": low, "high": high, "p": sign_flip_p(d)}


def exact_binomial_ci(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Clopper-Pearson interval of k successes in n trials (NaNs for n = 0)."""
    if n == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2
    low = 0.0 if k == 0 else float(stats.beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(stats.beta.ppf(1 - tail, k + 1, n - k))
    return low, high


def holm(p_values) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values of a family of tests (NaNs are not tests and stay NaN):
    the i-th smallest of m p-values becomes max over j <= i of min(1, (m - j + 1) p_(j))."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, math.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        out[index] = running
    return out


def lr_sensitivity(losses) -> np.ndarray:
    """Wortsman et al.'s LR sensitivity of (..., seeds, LRs) losses: over the LR grid, the mean of the
    seed-mean loss minus its minimum."""
    curve = np.asarray(losses, dtype=float).mean(axis=-2)  # (..., LRs)
    return curve.mean(axis=-1) - curve.min(axis=-1)


def _resampled_rows(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def sensitivity_interval(losses, level: float = LEVEL, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """(LR sensitivity, low, high) of a (seeds, LRs) loss matrix: the expanded percentile interval
    resamples whole seeds; NaNs for no seeds, the estimate thrice for one."""
    x = np.asarray(losses, dtype=float)
    if x.ndim != 2 or x.shape[0] == 0:
        return math.nan, math.nan, math.nan
    estimate = float(lr_sensitivity(x))
    if x.shape[0] == 1:
        return estimate, estimate, estimate
    boot = lr_sensitivity(x[_resampled_rows(x.shape[0], n_boot, seed)])
    return (estimate, *_expanded_interval(boot, x.shape[0], level))


def paired_sensitivity(losses, reference, level: float = LEVEL, n_boot: int = 10_000, seed: int = 0) -> dict:
    """LR sensitivity of `losses` minus that of `reference`, both (seeds, LRs) with row i of each from
    the same seed: n, diff, its bootstrap interval (seeds resampled jointly) and the two-sided p-value
    of the permutation test that swaps the two variants' rows within seeds (exact up to 16 seeds)."""
    x, r = np.asarray(losses, dtype=float), np.asarray(reference, dtype=float)
    n = x.shape[0] if x.ndim == 2 else 0
    if n == 0:
        return {"n": 0, "diff": math.nan, "low": math.nan, "high": math.nan, "p": math.nan}
    observed = float(lr_sensitivity(x) - lr_sensitivity(r))
    low = high = observed
    if n > 1:
        rows = _resampled_rows(n, n_boot, seed)
        low, high = _expanded_interval(lr_sensitivity(x[rows]) - lr_sensitivity(r[rows]), n, level)
    if n <= _EXACT_PAIRS:
        keep = np.array(list(itertools.product((True, False), repeat=n)))
    else:
        keep = np.random.default_rng(seed).random((100_000, n)) < 0.5
    keep = keep[:, :, None]  # (patterns, seeds, 1): True keeps the seed's rows, False swaps them
    swapped = lr_sensitivity(np.where(keep, x, r)) - lr_sensitivity(np.where(keep, r, x))
    p = float(np.mean(np.abs(swapped) >= abs(observed) - 1e-12 * max(abs(observed), 1.0)))
    return {"n": int(n), "diff": observed, "low": low, "high": high, "p": p}


def fisher_greater(diverged: int, runs: int, ref_diverged: int, ref_runs: int) -> float:
    """One-sided Fisher exact p-value that a variant with `diverged` of `runs` diverges more often
    than a reference with `ref_diverged` of `ref_runs`: P(X >= diverged) for X hypergeometric
    (all runs, all divergences, `runs` drawn)."""
    total, failures = runs + ref_runs, diverged + ref_diverged
    if total == 0:
        return math.nan
    tail = sum(math.comb(failures, x) * math.comb(total - failures, runs - x)
               for x in range(diverged, min(failures, runs) + 1))
    return tail / math.comb(total, runs)


def fisher_two_sided(diverged: int, runs: int, ref_diverged: int, ref_runs: int) -> float:
    """Two-sided Fisher exact p-value of two divergence counts (NaN when either has no runs)."""
    if runs == 0 or ref_runs == 0:
        return math.nan
    table = [[diverged, runs - diverged], [ref_diverged, ref_runs - ref_diverged]]
    return float(stats.fisher_exact(table, alternative="two-sided").pvalue)


def recipe_comparison(runs: pd.DataFrame, reference: str, level: float = LEVEL) -> pd.DataFrame:
    """Per variant and LR, from labelled runs (`report.label_runs`): divergence (count, rate and its
    exact interval, Fisher's one-sided p of more divergence than `reference`), the final validation
    loss of completed runs (mean, bootstrap interval) and its paired difference from `reference`
    over the seeds where both completed (mean, interval, sign-flip p)."""
    finished = runs[runs.status.isin(("completed", "diverged"))]
    ref = finished[finished.variant == reference]
    rows = []
    for (variant, lr), g in finished.groupby(["variant", "lr"], sort=False):
        r = ref[ref.lr == lr]
        diverged, n = int((g.status == "diverged").sum()), len(g)
        low, high = exact_binomial_ci(diverged, n, level)
        done = g[g.status == "completed"].set_index("seed").final_val_loss.astype(float)
        ref_done = r[r.status == "completed"].set_index("seed").final_val_loss.astype(float)
        seeds = done.index.intersection(ref_done.index)
        mean, loss_low, loss_high = bootstrap_ci(done.to_numpy(), level)
        pair = paired_difference(done[seeds].to_numpy(), ref_done[seeds].to_numpy(), level)
        ref_diverged = int((r.status == "diverged").sum())
        rows.append({
            "variant": variant, "lr": lr, "runs": n, "diverged": diverged, "diverged_low": low, "diverged_high": high,
            "p_more_diverged": fisher_greater(diverged, n, ref_diverged, len(r)) if variant != reference else math.nan,
            "loss": mean, "loss_low": loss_low, "loss_high": loss_high,
            "pairs": pair["n"], "diff": pair["diff"], "diff_low": pair["low"], "diff_high": pair["high"],
            "p_diff": pair["p"] if variant != reference else math.nan,
        })
    return pd.DataFrame(rows)
