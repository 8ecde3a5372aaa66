"""Intervals and tests for comparing recipes over seeds: bootstrap, paired sign-flip, exact binomial.

Seeds pair across recipes (the same seed gives the same initial weights and batch order whatever
the precision), so a recipe is compared with the reference seed by seed:

  `paired_difference(x, ref)`  mean of x - ref over the pairs, a percentile-bootstrap 95% interval
                               and the two-sided p-value of the exact sign-flip permutation test
                               (every one of the 2^n sign patterns when n <= 16)
  `bootstrap_ci(x)`            mean and percentile-bootstrap interval of one sample
  `exact_binomial_ci(k, n)`    Clopper-Pearson interval of a proportion (divergence rates)
  `holm(p_values)`             Holm-Bonferroni adjustment, for verdicts over many comparisons
  `recipe_comparison(runs, reference)`  all of these per recipe and learning rate, from a store's runs

With 3-4 seeds the bootstrap interval is narrow for its nominal level (it cannot be wider than the
sample's range), and the smallest achievable sign-flip p-value is 2 / 2^n (0.125 for 4 pairs):
"no difference detected" is then the only verdict the data can give unless n grows.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["bootstrap_ci", "paired_difference", "sign_flip_p", "exact_binomial_ci", "holm", "recipe_comparison", "LEVEL"]

LEVEL = 0.95
_EXACT_PAIRS = 16  # sign-flip test enumerates every pattern up to this many pairs


def bootstrap_ci(values, level: float = LEVEL, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of `values` and its percentile-bootstrap interval; NaNs for no
    values, (mean, mean, mean) for one."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    if x.size == 1:
        return float(x[0]), float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    tail = (1 - level) / 2
    return float(x.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


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


def recipe_comparison(runs: pd.DataFrame, reference: str, level: float = LEVEL) -> pd.DataFrame:
    """Per variant and LR, from labelled runs (`report.label_runs`): divergence (count, rate and its
    exact interval, Fisher's one-sided p of more divergence than `reference`), the final validation
    loss of completed runs (mean, bootstrap interval) and its paired difference from `reference`
    over the seeds where both completed (mean, interval, sign-flip p)."""
    from precisionlab.analysis.report import fisher_greater  # the report's test, one copy

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
