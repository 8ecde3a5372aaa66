"""Intervals and tests for comparing recipes over seeds: t intervals, permutation and exact tests.

Seeds pair across recipes (the same seed gives the same initial weights and batch order whatever
the precision), so a recipe is compared with the reference seed by seed:

  `mean_interval(x)`           mean of one sample and its 95% interval (or the seeds' range)
  `paired_difference(x, ref)`  mean of x - ref over the pairs, its interval (t on the differences)
                               and the two-sided p-value of the exact sign-flip permutation test
  `paired_t_p(d)`              the paired t test's p on the intervals' scale (the loss verdicts)
  `t_detectable(n, m, α)`      how many standard deviations of the differences that test needs
  `paired_margin(x, ref, δ)`   non-inferiority by a margin δ, decided by the difference's interval
  `sensitivity_interval(L)`    LR sensitivity of a (seeds x LRs) matrix of losses and its interval
  `paired_sensitivity(L, R)`   the difference ΔS of two variants' LR sensitivities over paired seeds,
                               its interval and the exact p-value of swapping the variants within seeds
  `exact_binomial_ci(k, n)`    Clopper-Pearson interval of a proportion (divergence rates)
  `stratified_exact_p(strata)` exact conditional test of equal divergence odds, stratified by LR
  `holm(p_values)`, `holm_reachable(p, floors)`, `smallest_holm_p(...)`, `seeds_needed(...)`
                               multiplicity (tests that cannot reach α left out: Tarone 1990), and
                               what a family of tests can reach at all with a given number of seeds
  `recipe_comparison(runs, reference)`  the tests per recipe and learning rate, from a store's runs

Every interval is returned with its kind: CI (a 95% confidence interval), RANGE (the seeds'
minimum and maximum: no confidence level is claimed; also where every seed gives the same value,
which shows no spread to build a CI on) or NONE (one value). Why these methods:

  * The grids run 2-8 seeds. A percentile bootstrap cannot reach beyond the sample's own range
    and covered 48% (2 seeds), 74% (3) and 88% (4) of normal samples at a nominal 95%, even
    expanded (Hesterberg 2015). A bootstrap-t has infinite bounds at 3 seeds (a ninth of the
    resamples repeat one value) and covered 91.7-92.3% of the lagging-seed samples at 4-8.
    Student's t is exact for normal seed-to-seed variation at any n >= 2, but on skewed data
    its misses pile up in one tail: 90-92.5% coverage on the lognormal and lagging-seed samples
    at 3-8 seeds. Means and paired differences therefore get Student's t with its tail
    probability cut to SKEW_MARGIN x α (the 98% t quantile behind a 95% interval): 94.3-97.5%
    on the skewed samples at 3-8 seeds, 97.6-98.8% on normal data (conservative there).
  * With 2 seeds that interval is t_{0.99, 1} = 31.8 times the half spread: it covers (97.5%)
    but says nothing. Below MIN_CI_SEEDS seeds the report prints the seeds' range instead,
    labelled as a range (it covers the mean about half the time and claims no level).
  * Paired differences: the t interval on the per-seed differences, and the paired t test read
    on that interval's scale (`paired_t_p`) behind the report's loss verdicts: the sign-flip
    permutation p (`sign_flip_p`) assumes less (a difference as likely positive as negative under
    no effect) but cannot go below 2 / 2^n, 0.25 at 3 seeds, so no loss difference however large
    could be detected with the seeds the grids run. Inverting it gives no finite 95% interval
    below 6 pairs either. The LR-sensitivity test stays a permutation test (its statistic is
    not a mean, so no t distribution describes it).
  * LR sensitivity S = mean_η ℓ̄(η) − min_η ℓ̄(η) is not smooth (a minimum of noisy means): a
    bootstrap of it is biased and under-covers, and per-seed sensitivities estimate a different,
    larger quantity. But S = max_a c_a over the K linear contrasts c_a = mean_η ℓ̄(η) − ℓ̄(a), each
    a mean over seeds of per-seed contrasts with its own t interval. The true S equals c at the
    true best LR a*, a fixed unknown: S <= U_{a*} <= max_a U_a needs one upper t bound (level
    α/2), and S >= max_a L_a needs all K lower bounds at once (Bonferroni, α/(2K) each). The
    interval [max_a L_a, max_a U_a] covers S with probability >= 95% whenever the per-seed
    contrasts are close to normal, and it contains the estimate S itself (computed from the same
    seeds). ΔS = S_X − S_R = max_a min_b D_ab with D_ab = c^X_a − c^R_b, paired per seed: the
    upper bound needs the K contrasts D_{a*b} (fixed a*), the lower bound the K contrasts D_{ab*};
    both at α/(2K). Identical variants give D_aa = 0 exactly, hence an interval around 0.
  * Divergence counts: the exact conditional test of a common odds ratio of 1 across LRs (the exact
    form of Cochran-Mantel-Haenszel): divergence rates differ wildly between LRs, and pooling the
    grid into one 2x2 table (Fisher) mixes LRs where everything diverges with LRs where nothing does.
  * Detectability: an exact permutation test with n pairs cannot give p below 2 / 2^n, and Holm
    multiplies the smallest p of a family of m tests by m; `smallest_holm_p` is the smallest
    adjusted p a test can reach in its family (Holm's adjustment is monotone in every p, so that
    is the adjusted p when every test reaches its own smallest p), and `seeds_needed` the number of
    paired seeds at which it drops below α.
  * Monte-Carlo permutation p-values (beyond 16 pairs) are (k + 1) / (N + 1), never 0.

Coverage is checked by simulation (normal, lognormal and a lagging-seed mixture at n = 2, 3, 4, 6,
8; tests/analysis/test_stats_coverage.py): every interval of kind CI reaches >= 93% there. The LR
sensitivity and ΔS bounds are conservative (96.5-100%): the price of a minimum over noisy means.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["mean_interval", "paired_difference", "paired_t_p", "t_detectable", "paired_margin", "sign_flip_p", "exact_binomial_ci", "holm", "recipe_comparison",
           "lr_sensitivity", "sensitivity_interval", "paired_sensitivity", "fisher_greater", "fisher_two_sided",
           "stratified_exact_p", "smallest_stratified_p", "stratified_floor_p", "holm_reachable", "smallest_holm_p", "seeds_needed", "interval_text",
           "LEVEL", "MIN_CI_SEEDS", "CI", "RANGE", "NONE"]

LEVEL = 0.95
MIN_CI_SEEDS = 3  # fewer seeds: the seeds' range, never a confidence interval
SKEW_MARGIN = 0.4  # the t interval of a mean takes tail probability 0.4 α: skewed data's one-sided misses
CI, RANGE, NONE = "95% CI", "range", ""  # the kinds of interval
_EXACT_PAIRS = 16  # permutation tests enumerate every pattern up to this many pairs
_N_RANDOM = 100_000  # random patterns beyond that


def _t_interval(values: np.ndarray, level: float) -> tuple[float, float, float, str]:
    """(mean, low, high, kind) of a 1-D sample: Student's t from MIN_CI_SEEDS values, the range below."""
    x = values[~np.isnan(values)]
    if x.size == 0:
        return math.nan, math.nan, math.nan, NONE
    mean = float(x.mean())
    if x.size == 1:
        return mean, math.nan, math.nan, NONE
    if x.size < MIN_CI_SEEDS or _no_spread(x):  # equal values show no spread to build a CI on
        return mean, float(x.min()), float(x.max()), RANGE
    tail = SKEW_MARGIN * (1 - level) / 2
    half = float(stats.t.ppf(1 - tail, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half, CI


def mean_interval(values, level: float = LEVEL) -> tuple[float, float, float, str]:
    """(mean, low, high, kind) of `values`: the t interval with the skewness margin (kind CI; module
    docstring) from MIN_CI_SEEDS values, the
    values' range (kind RANGE) for two, NaN bounds (kind NONE) for one or none."""
    return _t_interval(np.asarray(values, dtype=float).ravel(), level)


def interval_text(estimate: float, low: float, high: float, kind: str, spec: str = ".3f") -> str:
    """'x [low, high]' for a CI, 'x (range low to high)' for a range ('x (all seeds equal)' for a
    range of one value), 'x' alone for neither."""
    if estimate is None or math.isnan(estimate):
        return "–"
    x = format(estimate, spec)
    if kind == CI:
        return f"{x} [{format(low, spec)}, {format(high, spec)}]"
    if kind == RANGE and format(low, spec) == format(high, spec):
        return f"{x} (all seeds equal)"
    if kind == RANGE:
        return f"{x} (range {format(low, spec)} to {format(high, spec)})"
    return x


def _sign_patterns(n: int, seed: int) -> tuple[np.ndarray, bool]:
    """(patterns, exact): every one of the 2^n sign patterns up to _EXACT_PAIRS pairs, else random ones."""
    if n <= _EXACT_PAIRS:
        return np.array(list(itertools.product((1.0, -1.0), repeat=n))), True
    return np.random.default_rng(seed).choice((1.0, -1.0), size=(_N_RANDOM, n)), False


def _permutation_p(extreme: np.ndarray, exact: bool) -> float:
    """p from a boolean per pattern (at least as extreme as observed): the exact share over all
    patterns, or (k + 1) / (N + 1) over N random ones (the observed pattern counts as one)."""
    if exact:
        return float(extreme.mean())
    return float((extreme.sum() + 1) / (extreme.size + 1))


def _at_least(values: np.ndarray, observed: float) -> np.ndarray:
    return values >= observed - 1e-12 * max(observed, 1.0)


def sign_flip_p(differences, seed: int = 0) -> float:
    """Two-sided p-value of the sign-flip permutation test of mean(differences) = 0: exact over all
    2^n sign patterns for n <= 16, else (k + 1) / (N + 1) over N random patterns."""
    d = np.asarray(differences, dtype=float)
    if d.size == 0:
        return math.nan
    signs, exact = _sign_patterns(d.size, seed)
    return _permutation_p(_at_least(np.abs((signs * d).mean(axis=1)), abs(d.mean())), exact)


def paired_difference(x, reference, level: float = LEVEL) -> dict:
    """x - reference over paired observations: n, mean difference, its interval (t on the
    differences; see the module docstring) with its kind, and the sign-flip p-value."""
    d = np.asarray(x, dtype=float) - np.asarray(reference, dtype=float)
    mean, low, high, kind = mean_interval(d, level)
    return {"n": int(d.size), "diff": mean, "low": low, "high": high, "kind": kind, "p": sign_flip_p(d)}


def paired_t_p(differences, level: float = LEVEL) -> float:
    """Two-sided p-value of the paired t test of mean(differences) = 0, on the scale of the report's
    intervals: p < 1 - level exactly when the t interval of `mean_interval` excludes 0 (the t tail
    probability divided by SKEW_MARGIN, capped at 1). NaN below MIN_CI_SEEDS pairs; 1 when every
    difference is 0, 0 when they are equal and not 0 (no spread: the difference is exact)."""
    d = np.asarray(differences, dtype=float)
    d = d[~np.isnan(d)]
    if d.size < MIN_CI_SEEDS:
        return math.nan
    if _no_spread(d):
        return 1.0 if abs(float(d.mean())) <= 1e-12 else 0.0
    t = float(d.mean() / (d.std(ddof=1) / math.sqrt(d.size)))
    return min(1.0, float(2 * stats.t.sf(abs(t), d.size - 1)) / SKEW_MARGIN)


def t_detectable(pairs: int, tests: int, alpha: float) -> float:
    """The smallest |mean difference| / std(differences) at which `paired_t_p` over `pairs` pairs is
    below alpha / tests, the first step of Holm's procedure over `tests` tests (NaN below
    MIN_CI_SEEDS pairs). Unlike a permutation test's, the t test's p has no floor: any difference
    is detected once it is this many of its own seed-to-seed standard deviations."""
    if pairs < MIN_CI_SEEDS or tests < 1:
        return math.nan
    return float(stats.t.ppf(1 - SKEW_MARGIN * alpha / (2 * tests), pairs - 1) / math.sqrt(pairs))


def paired_margin(x, reference, margin: float, level: float = LEVEL) -> dict:
    """Non-inferiority of x against `reference` by `margin` (x - reference in the loss's units;
    larger is worse), paired by seed: `paired_difference`'s fields and a decision read off the
    difference's interval, the one the report prints:

      "within"    the interval lies below +margin: not worse than the reference by margin or more
      "beyond"    the interval lies above +margin: worse by more than the margin
      "undecided" neither, or no confidence interval (fewer than MIN_CI_SEEDS pairs)

    and `worse` (the interval lies above 0: significantly worse at all). The interval is the t
    interval with the skewness margin (module docstring), so "within" is a one-sided test at
    SKEW_MARGIN x (1 - level) / 2 (1%) on normal seed-to-seed noise (TOST's upper half)."""
    out = paired_difference(x, reference, level)
    ci = out["kind"] == CI
    exact = out["kind"] == RANGE and out["low"] == out["high"]  # every pair gives the same difference
    bounded = ci or exact
    out["margin"] = float(margin)
    out["decision"] = ("within" if bounded and out["high"] < margin else
                       "beyond" if bounded and out["low"] > margin else "undecided")
    out["worse"] = bool(bounded and out["low"] > 0)
    return out


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


def holm_reachable(p_values, floors, alpha: float = 1 - LEVEL) -> np.ndarray:
    """Holm over the tests that can reject at all: a test whose smallest reachable p (`floors`, its
    floor given the runs it has) is not below `alpha` cannot reject whatever the adjustment, so it
    is left out of the family (Tarone 1990; the floors of exact tests depend only on the margins,
    not on the outcome, so this keeps the family-wise error rate) and keeps its raw p. NaNs are
    not tests and stay NaN. With every floor below alpha this is `holm(p_values)`."""
    p, floor = np.asarray(p_values, dtype=float), np.asarray(floors, dtype=float)
    counted = ~np.isnan(p) & (floor < alpha)
    out = p.copy()
    out[counted] = holm(p[counted])
    return out


def smallest_permutation_p(pairs: int) -> float:
    """The smallest two-sided p an exact sign-flip or swap test over `pairs` seeds can give: 2 / 2^n."""
    return math.nan if pairs <= 0 else min(1.0, 2.0 / 2**pairs) if pairs <= _EXACT_PAIRS else 1 / (_N_RANDOM + 1)


def smallest_holm_p(smallest_raw, index: int, alpha: float = 1 - LEVEL) -> float:
    """The smallest adjusted p test `index` can reach in its family (`holm_reachable`: tests that
    cannot reach `alpha` are left out), given each test's smallest reachable raw p: Holm's adjusted
    p is non-decreasing in every raw p, so it is the adjusted p when every test reaches its own
    smallest."""
    p = np.asarray(smallest_raw, dtype=float)
    return float(holm_reachable(p, p, alpha)[index])


def seeds_needed(smallest_raw, index: int, alpha: float, most: int = 64) -> int | None:
    """The fewest paired seeds at which test `index`, an exact permutation test, can reach a
    Holm-adjusted p below `alpha` (the other tests' smallest p as given); None beyond `most`."""
    p = np.array(smallest_raw, dtype=float)
    for pairs in range(1, most + 1):
        p[index] = smallest_permutation_p(pairs)
        if smallest_holm_p(p, index, alpha) < alpha:
            return pairs
    return None


def lr_sensitivity(losses) -> np.ndarray:
    """Wortsman et al.'s LR sensitivity of (..., seeds, LRs) losses: over the LR grid, the mean of the
    seed-mean loss minus its minimum."""
    curve = np.asarray(losses, dtype=float).mean(axis=-2)  # (..., LRs)
    return curve.mean(axis=-1) - curve.min(axis=-1)


def _contrasts(losses: np.ndarray) -> np.ndarray:
    """Per seed, c_a = mean over the grid - loss at LR a: (seeds, LRs); S = max_a of their seed mean."""
    return losses.mean(axis=1, keepdims=True) - losses


def _t_bounds(values: np.ndarray, quantile: float) -> tuple[np.ndarray, np.ndarray]:
    """(mean - q se, mean + q se) over axis 0, q the t quantile at `quantile` with n - 1 df."""
    n = values.shape[0]
    half = stats.t.ppf(quantile, n - 1) * values.std(axis=0, ddof=1) / math.sqrt(n)
    mean = values.mean(axis=0)
    return mean - half, mean + half


def _no_spread(values: np.ndarray) -> bool:
    """Every seed (axis 0) gives the same values, up to float rounding of sums."""
    return bool(np.ptp(values, axis=0).max() <= 1e-12 * max(1.0, float(np.abs(values).max())))


def sensitivity_interval(losses, level: float = LEVEL) -> tuple[float, float, float, str]:
    """(LR sensitivity, low, high, kind) of a (seeds, LRs) loss matrix (module docstring: the
    largest of the K grid contrasts, lower bound simultaneous over them); the per-seed
    sensitivities' range for 2 seeds, NaN bounds for one, NaNs for none."""
    x = np.asarray(losses, dtype=float)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        return math.nan, math.nan, math.nan, NONE
    estimate, n, k = float(lr_sensitivity(x)), x.shape[0], x.shape[1]
    if n == 1:
        return estimate, math.nan, math.nan, NONE
    if n < MIN_CI_SEEDS:
        per_seed = lr_sensitivity(x[:, None, :])
        return estimate, float(per_seed.min()), float(per_seed.max()), RANGE
    alpha = 1 - level
    c = _contrasts(x)
    if _no_spread(c):  # every seed gives the same contrasts: no spread to build a CI on
        return estimate, estimate, estimate, RANGE
    low, _ = _t_bounds(c, 1 - alpha / (2 * k))
    _, high = _t_bounds(c, 1 - alpha / 2)
    return estimate, max(0.0, float(low.max())), float(high.max()), CI


def paired_sensitivity(losses, reference, level: float = LEVEL, seed: int = 0) -> dict:
    """LR sensitivity of `losses` minus that of `reference`, both (seeds, LRs) with row i of each from
    the same seed: n, diff (ΔS), its interval and kind (module docstring; for 2 seeds the range of
    the per-seed differences) and the two-sided p-value of the permutation test that swaps the two
    variants' rows within seeds (exact up to 16 seeds)."""
    x, r = np.asarray(losses, dtype=float), np.asarray(reference, dtype=float)
    n = x.shape[0] if x.ndim == 2 and x.shape[1] else 0
    if n == 0:
        return {"n": 0, "diff": math.nan, "low": math.nan, "high": math.nan, "kind": NONE, "p": math.nan}
    observed = float(lr_sensitivity(x) - lr_sensitivity(r))
    low = high = math.nan
    kind = NONE
    if n == 2:
        per_seed = lr_sensitivity(x[:, None, :]) - lr_sensitivity(r[:, None, :])
        low, high, kind = float(per_seed.min()), float(per_seed.max()), RANGE
    elif n >= MIN_CI_SEEDS:
        k, alpha = x.shape[1], 1 - level
        d = _contrasts(x)[:, :, None] - _contrasts(r)[:, None, :]  # (seeds, a, b): c^X_a - c^R_b
        lows, highs = _t_bounds(d, 1 - alpha / (2 * k))
        low, high, kind = float(lows.min(axis=1).max()), float(highs.min(axis=1).max()), CI
        if _no_spread(x - r):  # the same paired differences in every seed (e.g. bit-identical variants): no CI
            low, high, kind = observed, observed, RANGE
    signs, exact = _sign_patterns(n, seed)
    keep = (signs > 0)[:, :, None]  # (patterns, seeds, 1): True keeps the seed's rows, False swaps them
    swapped = lr_sensitivity(np.where(keep, x, r)) - lr_sensitivity(np.where(keep, r, x))
    p = _permutation_p(_at_least(np.abs(swapped), abs(observed)), exact)
    return {"n": int(n), "diff": observed, "low": low, "high": high, "kind": kind, "p": p}


def _hypergeometric(runs: int, ref_runs: int, failures: int) -> np.ndarray:
    """P(X = x) for x = 0..runs: divergences among a variant's `runs` when `failures` of all
    runs + ref_runs diverged, none more likely in either (the table's margins fixed)."""
    x = np.arange(runs + 1)
    return stats.hypergeom.pmf(x, runs + ref_runs, failures, runs)


def stratified_exact_p(strata, alternative: str = "two-sided") -> float:
    """Exact conditional test of equal divergence odds in a variant and a reference, stratified by
    LR. `strata`: (diverged, runs, ref_diverged, ref_runs) per LR. Given each LR's margins, the
    variant's divergences at that LR are hypergeometric; their sum T is the convolution. "greater":
    P(T >= observed); "two-sided": the total probability of the sums no more likely than observed
    (with one stratum: Fisher's exact test). NaN when no stratum has runs in both."""
    dist, observed = np.array([1.0]), 0
    for diverged, runs, ref_diverged, ref_runs in strata:
        if runs == 0 or ref_runs == 0:
            continue
        dist = np.convolve(dist, _hypergeometric(runs, ref_runs, diverged + ref_diverged))
        observed += diverged
    if dist.size == 1 and not any(runs and ref_runs for _, runs, _, ref_runs in strata):
        return math.nan
    if alternative == "greater":
        return float(min(1.0, dist[observed:].sum()))
    if alternative != "two-sided":
        raise ValueError(f"alternative must be 'two-sided' or 'greater', not {alternative!r}")
    return float(min(1.0, dist[dist <= dist[observed] * (1 + 1e-7)].sum()))


def smallest_stratified_p(strata) -> float:
    """The smallest two-sided p `stratified_exact_p` can give with these runs per stratum: every
    variant run diverged and no reference run, or the reverse."""
    runs = [(n, nr) for _, n, _, nr in strata]
    return min(stratified_exact_p([(n, n, 0, nr) for n, nr in runs]),
               stratified_exact_p([(0, n, nr, nr) for n, nr in runs]))


def stratified_floor_p(strata) -> float:
    """The smallest two-sided p `stratified_exact_p` can give with these strata's margins (runs and
    total divergences per LR fixed, as the conditional test fixes them): 1 when no LR has a
    divergence to place, e.g. 0.1 for 3 of 3 vs 0 of 3 (Fisher: 2 / C(6, 3)). NaN as the test."""
    dist = np.array([1.0])
    for diverged, runs, ref_diverged, ref_runs in strata:
        if runs and ref_runs:
            dist = np.convolve(dist, _hypergeometric(runs, ref_runs, diverged + ref_diverged))
    if dist.size == 1 and not any(runs and ref_runs for _, runs, _, ref_runs in strata):
        return math.nan
    support = dist[dist > 0]
    return float(min(1.0, min(support[support <= q * (1 + 1e-7)].sum() for q in support)))


def fisher_greater(diverged: int, runs: int, ref_diverged: int, ref_runs: int) -> float:
    """One-sided Fisher exact p-value that a variant with `diverged` of `runs` diverges more often
    than a reference with `ref_diverged` of `ref_runs` (the one-stratum `stratified_exact_p`)."""
    return stratified_exact_p([(diverged, runs, ref_diverged, ref_runs)], "greater")


def fisher_two_sided(diverged: int, runs: int, ref_diverged: int, ref_runs: int) -> float:
    """Two-sided Fisher exact p-value of two divergence counts (NaN when either has no runs)."""
    return stratified_exact_p([(diverged, runs, ref_diverged, ref_runs)])


def recipe_comparison(runs: pd.DataFrame, reference: str, level: float = LEVEL) -> pd.DataFrame:
    """Per variant and LR, from labelled runs (`labels.label_runs`): divergence (count, rate and its
    exact interval, Fisher's one-sided p of more divergence than `reference`), the final validation
    loss of completed runs (mean, interval and its kind) and its paired difference from `reference`
    over the seeds where both completed (mean, interval, kind, sign-flip p)."""
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
        mean, loss_low, loss_high, loss_kind = mean_interval(done.to_numpy(), level)
        pair = paired_difference(done[seeds].to_numpy(), ref_done[seeds].to_numpy(), level)
        ref_diverged = int((r.status == "diverged").sum())
        rows.append({
            "variant": variant, "lr": lr, "runs": n, "diverged": diverged, "diverged_low": low, "diverged_high": high,
            "p_more_diverged": fisher_greater(diverged, n, ref_diverged, len(r)) if variant != reference else math.nan,
            "loss": mean, "loss_low": loss_low, "loss_high": loss_high, "loss_interval": loss_kind,
            "pairs": pair["n"], "diff": pair["diff"], "diff_low": pair["low"], "diff_high": pair["high"],
            "diff_interval": pair["kind"], "p_diff": pair["p"] if variant != reference else math.nan,
        })
    return pd.DataFrame(rows)
