"""The comparison statistics on data with known answers: scipy's exact and t intervals, the grid
contrasts' interval written out, the sign-flip test's exact p-values, a planted difference and a null
one, the stratified exact test, Holm and what a family of tests can reach (coverage:
test_stats_coverage.py)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.stats import binomtest, fisher_exact

from precisionlab.analysis.stats import (
    CI,
    NONE,
    RANGE,
    interval_text,
    mean_interval,
    exact_binomial_ci,
    fisher_two_sided,
    holm,
    lr_sensitivity,
    paired_difference,
    paired_sensitivity,
    recipe_comparison,
    sensitivity_interval,
    seeds_needed,
    sign_flip_p,
    smallest_holm_p,
    smallest_permutation_p,
    smallest_stratified_p,
    stratified_exact_p,
)


@pytest.mark.parametrize("k,n", [(0, 4), (1, 4), (4, 4), (3, 12), (7, 20), (0, 1)])
def test_exact_interval_is_scipys_clopper_pearson(k, n):
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert exact_binomial_ci(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_mean_interval_is_scipys_t_interval_at_the_skew_margin_level():
    x = np.array([2.31, 2.45, 2.28, 2.52, 2.40])
    low, high = stats.t.interval(0.98, df=4, loc=x.mean(), scale=stats.sem(x))  # 95% with tail 0.4 x 5%
    assert mean_interval(x) == (pytest.approx(x.mean()), pytest.approx(low), pytest.approx(high), CI)


def test_two_seeds_give_their_range_one_seed_no_interval_never_a_point_ci():
    assert mean_interval([1.0, 2.0]) == (1.5, 1.0, 2.0, RANGE)
    mean, low, high, kind = mean_interval([1.0])
    assert (mean, kind) == (1.0, NONE) and math.isnan(low) and math.isnan(high)
    assert interval_text(1.5, 1.0, 2.0, RANGE) == "1.500 (range 1.000 to 2.000)"
    assert interval_text(1.0, math.nan, math.nan, NONE) == "1.000"
    assert interval_text(2.0, 1.0, 3.0, CI) == "2.000 [1.000, 3.000]"
    # equal values: their range, printed as such, never a zero-width CI [x, x]
    assert mean_interval([2.5, 2.5, 2.5]) == (2.5, 2.5, 2.5, RANGE)
    assert interval_text(*mean_interval([2.5, 2.5, 2.5])) == "2.500 (all seeds equal)"
    same = np.tile(CURVE, (4, 1)) + np.arange(4)[:, None] * 0.1  # a per-seed offset only: equal contrasts
    assert sensitivity_interval(same)[1:] == (pytest.approx(0.4), pytest.approx(0.4), RANGE)
    assert paired_sensitivity(same, same)["kind"] == RANGE


# a loss curve over four LRs whose minimum is well apart: true LR sensitivity 3.0 - 2.6 = 0.4
CURVE = np.array([3.0, 2.6, 2.8, 3.6])


def test_lr_sensitivity_interval_written_out_from_the_grid_contrasts():
    assert lr_sensitivity([[3.0, 3.4], [3.2, 3.6]]) == pytest.approx(0.2)  # seed means 3.1, 3.5: mean(0, 0.4)
    rng = np.random.default_rng(1)
    losses = CURVE + rng.normal(0, 0.1, (5, 4))
    c = losses.mean(axis=1, keepdims=True) - losses  # per seed: grid mean - loss at each LR
    se = c.std(axis=0, ddof=1) / math.sqrt(5)
    low = max(c.mean(axis=0) - stats.t.ppf(1 - 0.05 / 8, 4) * se)  # all 4 lower bounds at once: Bonferroni
    high = max(c.mean(axis=0) + stats.t.ppf(1 - 0.05 / 2, 4) * se)  # the true best LR's contrast alone
    estimate = losses.mean(axis=0).mean() - losses.mean(axis=0).min()
    assert sensitivity_interval(losses) == (pytest.approx(estimate), pytest.approx(max(low, 0)), pytest.approx(high), CI)
    assert low <= estimate <= high  # the estimate sits inside its own interval
    assert math.isnan(sensitivity_interval(np.empty((0, 4)))[0])
    one = sensitivity_interval([[3.0, 3.4]])
    assert one[0] == pytest.approx(0.2) and math.isnan(one[1]) and one[3] == NONE  # one seed: no interval
    # two seeds: the range of the per-seed sensitivities (0.2 and 0.5), not a CI
    assert sensitivity_interval([[3.0, 3.4], [3.0, 4.0]])[1:] == (pytest.approx(0.2), pytest.approx(0.5), RANGE)


def test_paired_sensitivity_written_out_detects_a_planted_difference_and_not_a_null_one():
    # Two seeds (the report test's fp32 and e8m7): swapping seed 0 gives seed means [3.15, 3.45] vs
    # [3.15, 4.55], a difference of 0.15 - 0.7 = -0.55; seed 1 alone +0.55; both -0.45: all four
    # patterns are as extreme as the observed +0.45, so p = 1.
    e8m7, fp32 = [[3.1, 5.5], [3.3, 3.5]], [[3.0, 3.4], [3.2, 3.6]]
    paired = paired_sensitivity(e8m7, fp32)
    assert (paired["n"], paired["p"]) == (2, 1.0) and paired["diff"] == pytest.approx(0.45)
    rng = np.random.default_rng(0)
    reference = CURVE + rng.normal(0, 0.1, (8, 4))
    worse = reference + np.array([0, 0, 0, 0.5]) + rng.normal(0, 0.05, (8, 4))  # +0.5 at the largest LR: ΔS = +0.125
    planted = paired_sensitivity(worse, reference)
    assert planted["p"] <= 2 / 2**8 + 1e-12 and planted["low"] > 0 and planted["diff"] == pytest.approx(0.125, abs=0.03)
    null = paired_sensitivity(CURVE + rng.normal(0, 0.1, (8, 4)), reference)
    assert null["p"] > 0.05 and null["low"] <= 0 <= null["high"]


def test_two_sided_fisher_written_out():
    # 2/4 vs 0/4: hypergeometric over 8 runs with 2 divergences, 4 drawn: P(0) = P(2) = 15/70,
    # P(1) = 40/70; two-sided: the tables no more likely than the observed one, 30/70
    assert fisher_two_sided(2, 4, 0, 4) == pytest.approx(30 / 70)
    assert fisher_two_sided(1, 4, 1, 4) == pytest.approx(1.0) and math.isnan(fisher_two_sided(0, 0, 1, 4))


def test_sign_flip_p_values_written_out():
    assert sign_flip_p([0.1, 0.2, 0.3, 0.4]) == 2 / 16  # only all-plus and all-minus reach |mean| 0.25
    assert sign_flip_p([1.0, -1.0, 2.0, -2.0]) == 1.0  # mean 0: every pattern is as extreme
    assert sign_flip_p([0.5, 0.1, 0.1]) == 2 / 8  # |mean| 0.233 only at +++ and ---; the others 0.167 or 0.1
    assert math.isnan(sign_flip_p([]))


def test_monte_carlo_permutation_p_values_are_never_zero():
    # 20 pairs, all +1: no random pattern but the all-plus one is as extreme; the exact p is
    # 2 / 2^20 (~2e-6), a Monte-Carlo estimate over N = 100,000 patterns is (k + 1) / (N + 1)
    p = sign_flip_p(np.ones(20))
    assert 0 < p <= 3 / 100_001
    x = np.tile(CURVE, (20, 1)) + np.linspace(0, 0.01, 20)[:, None]
    assert 0 < paired_sensitivity(x + np.array([0, 0, 0, 1.0]), x)["p"] <= 3 / 100_001


def _stratified_by_enumeration(strata):
    """The exact conditional test written out: every table with each stratum's margins, the
    probability of the variant's divergence counts a product of hypergeometric terms."""
    options = []
    for k, n, kr, nr in strata:
        total = k + kr
        options.append([(x, math.comb(total, x) * math.comb(n + nr - total, n - x) / math.comb(n + nr, n))
                        for x in range(max(0, total - nr), min(total, n) + 1)])
    observed = sum(k for k, *_ in strata)
    by_sum = {}
    for combo in itertools.product(*options):
        t = sum(x for x, _ in combo)
        by_sum[t] = by_sum.get(t, 0.0) + math.prod(q for _, q in combo)
    greater = sum(q for t, q in by_sum.items() if t >= observed)
    two_sided = sum(q for q in by_sum.values() if q <= by_sum[observed] * (1 + 1e-7))
    return greater, two_sided


@pytest.mark.parametrize("strata", [
    [(3, 4, 0, 4), (0, 4, 0, 4), (4, 4, 4, 4)],  # one informative LR among uninformative ones
    [(2, 4, 1, 4), (1, 4, 0, 4), (4, 4, 2, 4)],
    [(2, 8, 0, 8)],
])
def test_stratified_exact_test_against_enumeration_and_fisher(strata):
    greater, two_sided = _stratified_by_enumeration(strata)
    assert stratified_exact_p(strata, "greater") == pytest.approx(greater, rel=1e-9)
    assert stratified_exact_p(strata) == pytest.approx(two_sided, rel=1e-9)
    if len(strata) == 1:
        table = [[strata[0][0], strata[0][1] - strata[0][0]], [strata[0][2], strata[0][3] - strata[0][2]]]
        assert stratified_exact_p(strata) == pytest.approx(fisher_exact(table).pvalue, rel=1e-9)


def test_stratified_test_does_not_pool_lrs():
    # 3/4 vs 0/4 at one LR, everything diverged at another, nothing at a third: pooled into one
    # table (7/12 vs 4/12) Fisher sees little (p = 0.41); within LRs it is the 3/4 vs 0/4 table alone
    strata = [(3, 4, 0, 4), (0, 4, 0, 4), (4, 4, 4, 4)]
    assert fisher_two_sided(7, 12, 4, 12) == pytest.approx(fisher_exact([[7, 5], [4, 8]]).pvalue)
    assert stratified_exact_p(strata) == pytest.approx(fisher_exact([[3, 1], [0, 4]]).pvalue)
    assert stratified_exact_p(strata) < fisher_two_sided(7, 12, 4, 12)
    assert smallest_stratified_p([(0, 4, 0, 4)]) == pytest.approx(2 / math.comb(8, 4))


def test_smallest_reachable_holm_p_and_seeds_needed():
    # fp8_recipes: 7 recipes, each a ΔS permutation test over 8 paired seeds (smallest p 2/256) and a
    # divergence test over 24 + 24 runs (smallest p far below): the ΔS tests rank after the 7
    # divergence tests, Holm multiplies their p by 7 at best: 7 x 2/256 = 0.0547
    divergence = smallest_stratified_p([(0, 8, 0, 8)] * 3)
    family = [divergence] * 7 + [smallest_permutation_p(8)] * 7
    assert smallest_holm_p(family, 7) == pytest.approx(7 * 2 / 256)
    assert seeds_needed(family, 7, 0.05) == 9  # 7 x 2/512 = 0.027
    # master weights: three sign-flip tests over 6 seeds: 3 x 2/64 = 0.094, as the study's Holm gives
    assert smallest_holm_p([smallest_permutation_p(6)] * 3, 0) == pytest.approx(3 * 2 / 64)
    assert seeds_needed([smallest_permutation_p(6)] * 3, 0, 0.05) == 7  # 3 x 2/128 = 0.047


def test_paired_test_detects_a_planted_difference_and_not_a_null_one():
    rng = np.random.default_rng(0)
    base = rng.normal(3.0, 0.3, size=12)  # seed-to-seed variation, shared by the pairs
    planted = paired_difference(base + 0.1 + rng.normal(0, 0.02, 12), base)
    null = paired_difference(base + rng.normal(0, 0.02, 12), base)
    assert planted["p"] < 0.01 and planted["low"] > 0.05 and planted["high"] < 0.15
    assert null["p"] > 0.05 and null["low"] < 0 < null["high"]


def _runs(variant, lr, losses, statuses):
    return pd.DataFrame({"variant": variant, "lr": lr, "seed": range(len(losses)), "final_val_loss": losses,
                         "status": statuses})


def test_recipe_comparison_on_a_constructed_store():
    runs = pd.concat([
        _runs("bf16", 0.1, [3.0, 3.1, 3.2, 3.3], ["completed"] * 4),
        _runs("fp8", 0.1, [3.1, 3.2, 3.3, 3.4], ["completed"] * 4),
        _runs("fp4", 0.1, [3.5, math.nan, math.nan, 3.6], ["completed", "diverged", "diverged", "completed"]),
    ])
    table = recipe_comparison(runs, "bf16").set_index("variant")
    fp8, fp4 = table.loc["fp8"], table.loc["fp4"]
    assert (fp8.pairs, fp8.diverged) == (4, 0)
    assert fp8["diff"] == pytest.approx(0.1) and fp8.diff_low == pytest.approx(0.1) and fp8.diff_high == pytest.approx(0.1)
    assert fp8.diff_interval == RANGE  # every pair differs by 0.1: no spread, so no CI is claimed
    assert fp8.p_diff == 2 / 16 and fp8.loss == pytest.approx(3.25)
    assert (fp4.diverged, fp4.pairs) == (2, 2) and fp4["diff"] == pytest.approx(0.4)  # seeds 0 and 3 pair
    assert fp4.p_more_diverged == pytest.approx(fisher_exact([[2, 2], [0, 4]], alternative="greater").pvalue)
    assert (fp4.diverged_low, fp4.diverged_high) == pytest.approx(exact_binomial_ci(2, 4))
    assert math.isnan(table.loc["bf16"].p_diff)


def test_holm_adjustment_written_out():
    # sorted 0.01, 0.02, 0.04 of m = 3 tests: 3 x 0.01, max(0.03, 2 x 0.02), max(0.04, 1 x 0.04)
    adjusted = holm([0.04, math.nan, 0.01, 0.02])
    assert math.isnan(adjusted[1])
    assert adjusted[[2, 3, 0]] == pytest.approx([0.03, 0.04, 0.04])
    assert list(holm([0.5, 0.9])) == [1.0, 1.0]


def test_recipe_stats_script_refuses_a_missing_store_in_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[2] / "scripts" / "recipe_stats.py"
    proc = subprocess.run([sys.executable, str(script), "--store", str(tmp_path / "none.db")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr
    assert not (tmp_path / "none.db").exists()


def test_master_weights_study_refuses_a_missing_store_in_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[2] / "scripts" / "master_weights_study.py"
    proc = subprocess.run([sys.executable, str(script), "--store", str(tmp_path / "none.db"), "--plot", str(tmp_path / "p.png")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr
    assert not (tmp_path / "none.db").exists() and not (tmp_path / "p.png").exists()


def test_master_weights_study_holm_adjusts_its_three_tests():
    # 6 seeds, nearest even 0.078 above fp32 master weights in every seed, SR on it: the paired t
    # test's p (scipy's, divided by the skew margin 0.4), Holm over the study's 3 tests
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[2] / "scripts" / "master_weights_study.py"
    spec = importlib.util.spec_from_file_location("master_weights_study", path)
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)
    base = np.array([2.431, 2.445, 2.436, 2.440, 2.442, 2.438])
    rows = [("fp32 master", base), ("bf16 RNE", base + 0.078 + np.linspace(-0.002, 0.002, 6)),
            ("bf16 SR", base + np.array([0.0004, -0.0003, 0.0002, -0.0001, 0.0005, -0.0002]))]
    runs = pd.concat([pd.DataFrame({"variant": v, "seed": range(6), "final_val_loss": x}) for v, x in rows])
    lines = study.table(runs)
    rne = next(line for line in lines if line.startswith("| bf16 RNE"))
    d = base + 0.078 + np.linspace(-0.002, 0.002, 6) - base
    p_rne = stats.ttest_1samp(d, 0).pvalue / 0.4
    p_sr = min(1.0, stats.ttest_1samp(rows[2][1] - base, 0).pvalue / 0.4)
    p_sr_rne = stats.ttest_1samp(rows[2][1] - rows[1][1], 0).pvalue / 0.4
    holm_rne = max(3 * min(p_rne, p_sr_rne), 2 * max(p_rne, p_sr_rne)) if p_rne > p_sr_rne else 3 * p_rne  # written out
    assert f"| {p_rne:.2g} | {holm_rne:.2g} |" in rne and p_sr > 0.05
    low, high = stats.t.interval(0.98, 5, loc=d.mean(), scale=stats.sem(d))
    assert f"[{low:+.4f}, {high:+.4f}]" in rne
    assert not any("can reach" in line for line in lines)  # a t test has no floor


def test_the_delta_s_of_bit_identical_variants_is_all_seeds_equal_never_a_zero_width_ci():
    """A twin (E7M7 runs bit-identical to E8M7's) has ΔS = 0 in every seed: its range, not '[0, 0]'."""
    losses = np.array([[2.2, 2.6, 2.8], [2.1, 2.5, 2.9], [2.3, 2.7, 2.7], [2.2, 2.6, 3.0]])
    twin = paired_sensitivity(losses, losses.copy())
    assert (twin["diff"], twin["kind"]) == (0.0, RANGE)
    assert interval_text(twin["diff"], twin["low"], twin["high"], twin["kind"], "+.3f") == "+0.000 (all seeds equal)"
    noisy = paired_sensitivity(losses + np.array([[0.01], [0.0], [-0.02], [0.03]]), losses)
    assert noisy["kind"] == CI  # differences that vary between seeds keep their CI


def test_paired_t_p_is_scipys_t_test_on_the_intervals_scale():
    from scipy import stats as sp

    from precisionlab.analysis.stats import SKEW_MARGIN, mean_interval, paired_t_p

    rng = np.random.default_rng(7)
    for n in (3, 4, 6):
        for _ in range(50):
            d = rng.normal(0.01, 0.02, n)
            p = paired_t_p(d)
            assert p == pytest.approx(min(1.0, sp.ttest_1samp(d, 0).pvalue / SKEW_MARGIN), rel=1e-9)
            _, low, high, _ = mean_interval(d)
            assert (p < 0.05) == (low > 0 or high < 0)  # the test and the printed interval agree
    assert math.isnan(paired_t_p([0.1, 0.2]))  # two pairs: no test


def test_paired_margin_reads_the_decision_off_the_interval():
    from scipy import stats as sp

    from precisionlab.analysis.stats import SKEW_MARGIN, paired_margin

    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(300):
        ref = rng.normal(2.2, 0.02, 4)
        x = ref + rng.normal(rng.choice([0.0, 0.02, 0.1]), 0.01, 4)
        d = x - ref
        half = sp.t.ppf(1 - SKEW_MARGIN * 0.025, 3) * d.std(ddof=1) / 2  # written out: 98% t quantile, n = 4
        out = paired_margin(x, ref, 0.05)
        expected = ("within" if d.mean() + half < 0.05 else "beyond" if d.mean() - half > 0.05 else "undecided")
        assert out["decision"] == expected
        assert out["worse"] == (d.mean() - half > 0)
        seen.add(expected)
    assert seen == {"within", "beyond", "undecided"}
    assert paired_margin([2.3, 2.4], [2.2, 2.2], 0.05)["decision"] == "undecided"  # 2 seeds: no CI


@pytest.mark.parametrize("pairs, tests", [(3, 1), (3, 21), (4, 60), (8, 10)])
def test_t_detectable_is_where_scipys_t_test_crosses_holms_first_step(pairs, tests):
    """Differences whose mean is just above (below) t_detectable standard deviations give a scipy
    one-sample t p, divided by SKEW_MARGIN as the report's scale does, below (above) α / tests."""
    from scipy import stats as scipy_stats

    from precisionlab.analysis.stats import SKEW_MARGIN, t_detectable

    ratio = t_detectable(pairs, tests, 0.05)
    shape = np.random.default_rng(pairs).normal(size=pairs)
    shape = (shape - shape.mean()) / shape.std(ddof=1)  # mean 0, sd 1
    for factor, below in ((1.001, True), (0.999, False)):
        d = shape + factor * ratio
        p = scipy_stats.ttest_1samp(d, 0.0).pvalue / SKEW_MARGIN
        assert bool(p < 0.05 / tests) == below
    assert math.isnan(t_detectable(2, 5, 0.05))


def test_stratified_floor_is_the_smallest_p_the_margins_allow():
    from itertools import product

    from precisionlab.analysis.stats import stratified_floor_p

    # one stratum: the smallest two-sided Fisher p over every table with these margins (scipy)
    for runs, ref_runs, failures in ((3, 3, 3), (6, 6, 6), (4, 5, 2), (3, 3, 0), (5, 5, 1)):
        tables = [(k, runs, failures - k, ref_runs) for k in range(max(0, failures - ref_runs), min(runs, failures) + 1)]
        expected = min(fisher_exact([[k, n - k], [kr, nr - kr]]).pvalue for k, n, kr, nr in tables)
        got = stratified_floor_p([(min(runs, failures), runs, failures - min(runs, failures), ref_runs)])
        assert got == pytest.approx(expected, rel=1e-9)
    assert stratified_floor_p([(3, 3, 0, 3)]) == pytest.approx(0.1)  # 3 of 3 against 0 of 3: never below 0.05
    assert stratified_floor_p([(0, 6, 0, 6), (0, 6, 0, 6)]) == 1.0  # nothing diverged: nothing to test
    # two strata: the minimum of stratified_exact_p over every split of each stratum's divergences
    strata = [(2, 4, 1, 4), (1, 3, 1, 3)]
    splits = [[(k, n, f - k, nr) for k in range(max(0, f - nr), min(n, f) + 1)]
              for (d, n, dr, nr), f in ((s, s[0] + s[2]) for s in strata)]
    assert stratified_floor_p(strata) == pytest.approx(min(stratified_exact_p(list(c)) for c in product(*splits)))



@pytest.mark.parametrize("runs, ref_runs", [(3, 3), (4, 5), (6, 6), (2, 7)])
def test_the_floor_given_the_margins_is_never_below_the_smallest_p_of_any_outcome(runs, ref_runs):
    """The report's family floors (verdicts.family_floors) bound the divergence test's floor given the
    margins by the smallest p over every outcome: this is why the bound changes no floor."""
    from precisionlab.analysis.stats import smallest_stratified_p, stratified_floor_p

    every = {(k, kr): fisher_exact([[k, runs - k], [kr, ref_runs - kr]]).pvalue
             for k in range(runs + 1) for kr in range(ref_runs + 1)}  # scipy, every outcome
    smallest = smallest_stratified_p([(0, runs, 0, ref_runs)])
    assert smallest == pytest.approx(min(every.values()), rel=1e-9)
    for (k, kr), p in every.items():
        floor = stratified_floor_p([(k, runs, kr, ref_runs)])
        assert smallest <= floor * (1 + 1e-9) and floor <= p * (1 + 1e-9)

def test_holm_reachable_leaves_out_the_tests_that_cannot_reject():
    from precisionlab.analysis.stats import holm_reachable

    p = [0.01, 0.2, 0.02, float("nan"), 0.3]
    floors = [0.0, 0.1, 0.0, 0.0, 0.0]  # the second test cannot reach 0.05 whatever happens
    out = holm_reachable(p, floors)
    # Holm written out over the three counted tests (0.01, 0.02, 0.3): 3 x 0.01, 2 x 0.02, 1 x 0.3
    assert out[0] == pytest.approx(0.03) and out[2] == pytest.approx(0.04) and out[4] == pytest.approx(0.3)
    assert out[1] == 0.2 and math.isnan(out[3])  # left out: its raw p; not a test: NaN
    np.testing.assert_allclose(holm_reachable(p, [0.0] * 5), holm(p))  # every floor below α: plain Holm
