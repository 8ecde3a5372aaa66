"""The early-warning ROC: its AUC against scipy's Mann-Whitney U, useless and informative signals,
AUC by lead, and the coverage of the AUC interval by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from helpers.warning_runs import synthetic
from precisionlab.analysis.warning import auc_interval, early_warning, roc, signals, windows

N_DIVERGED, N_COMPLETED, DIVERGED_AT = 8, 20, 25


def noisy_runs(rng, diverged_scale=1.0, diverged_at=DIVERGED_AT):
    """N_COMPLETED completed and N_DIVERGED diverged runs at one LR, every run its own seed; the
    signal is iid lognormal noise, multiplied by `diverged_scale` in the diverged runs."""
    specs = [{"run_id": f"c{s}", "seed": s, "signal": lambda step, r=rng.lognormal(size=300): r[: len(step)]}
             for s in range(N_COMPLETED)]
    specs += [{"run_id": f"d{s}", "seed": 100 + s, "diverged_step": diverged_at,
               "signal": lambda step, r=diverged_scale * rng.lognormal(size=300): r[: len(step)]}
              for s in range(N_DIVERGED)]
    return synthetic(specs)


def running_max_at(curves, step):
    """Each run's largest grad norm up to `step`, the diverged runs' first."""
    upto = curves[curves.step <= step].groupby("run_id").grad_norm.max()
    return upto[upto.index.str.startswith("d")].to_numpy(), upto[upto.index.str.startswith("c")].to_numpy()


@pytest.mark.parametrize("lead", [1, 10])
def test_auc_is_mann_whitney_u_over_the_pairs(lead):
    runs, curves = noisy_runs(np.random.default_rng(lead), diverged_scale=1.5)
    diverged, completed = running_max_at(curves, DIVERGED_AT - lead)
    oracle = stats.mannwhitneyu(diverged, completed).statistic / (len(diverged) * len(completed))
    (row,) = early_warning(runs, signals(curves), lead=lead).itertuples()
    assert row.auc == pytest.approx(oracle, abs=1e-12)
    assert (row.auc_diverged, row.auc_completed) == (N_DIVERGED, N_COMPLETED)


def test_ties_count_half_as_in_mann_whitney():
    rng = np.random.default_rng(3)
    runs, curves = noisy_runs(rng)
    curves = curves.assign(grad_norm=np.round(curves.grad_norm, 0))  # a coarse signal: many ties
    diverged, completed = running_max_at(curves, DIVERGED_AT - 1)
    oracle = stats.mannwhitneyu(diverged, completed).statistic / (len(diverged) * len(completed))
    assert early_warning(runs, signals(curves), lead=1).auc.iloc[0] == pytest.approx(oracle, abs=1e-12)


def test_a_useless_signal_has_auc_near_one_half():
    for seed in range(5):
        runs, curves = noisy_runs(np.random.default_rng(10 + seed))
        (row,) = early_warning(runs, signals(curves), lead=1).itertuples()
        assert abs(row.auc - 0.5) < 0.3 and row.auc_low < 0.5 < row.auc_high


def test_an_informative_signal_has_auc_near_one():
    runs, curves = noisy_runs(np.random.default_rng(4), diverged_scale=20.0)
    (row,) = early_warning(runs, signals(curves), lead=1).itertuples()
    assert row.auc >= 0.95 and row.auc_low > 0.7


def test_auc_by_lead_separates_a_late_precursor_from_an_early_one():
    """The diverged runs' signal jumps 5 steps before they diverge: what it showed 1 step ahead
    separates them from completed runs at the same step, what it showed 10 steps ahead does not."""
    late = lambda step: 1.0 + 0.001 * step + 9.0 * (step >= DIVERGED_AT - 5)  # noqa: E731
    specs = [{"run_id": f"c{s}", "seed": s, "signal": lambda step, s=s: 1.0 + 0.001 * step + 0.01 * s} for s in range(6)]
    specs += [{"run_id": f"d{s}", "seed": 10 + s, "diverged_step": DIVERGED_AT,
               "signal": lambda step, s=s: late(step) + 0.01 * s} for s in range(4)]
    runs, curves = synthetic(specs)
    out = windows(runs, signals(curves), leads=(1, 5, 10)).set_index("lead")
    assert out.auc[1] == 1.0 and out.auc[5] == 1.0
    # 10 ahead the diverged offsets 0, .01, .02, .03 meet completed 0 ... .05: U by hand
    assert out.auc[10] == pytest.approx(sum(sum((d > c) + 0.5 * (d == c) for c in range(6)) for d in range(4)) / 24)
    assert list(out.diverged) == [4, 4, 4] and list(out.completed) == [6, 6, 6]


def test_the_roc_runs_from_corner_to_corner_and_its_area_is_the_auc():
    runs, curves = noisy_runs(np.random.default_rng(5), diverged_scale=2.0)
    table = signals(curves)
    curve = roc(runs, table, leads=(1,))
    x, y = curve.false_alarm_rate.to_numpy(), curve.hit_rate.to_numpy()
    assert (x[0], y[0], x[-1], y[-1]) == (0, 0, 1, 1) and (np.diff(x) >= 0).all() and (np.diff(y) >= 0).all()
    diverged, completed = running_max_at(curves, DIVERGED_AT - 1)
    area = float(np.sum(np.diff(x) * y[:-1]))  # the curve is a staircase: rectangles under it
    assert area == pytest.approx(stats.mannwhitneyu(diverged, completed).statistic / (len(diverged) * len(completed)))
    # its height at no false alarm: the diverged runs above every completed run at that step
    assert y[x == 0].max() == pytest.approx(np.mean(diverged > completed.max()))


def test_the_auc_interval_solves_the_score_equation_written_out():
    a, m, n, z = 0.8, 5, 12, stats.norm.ppf(0.975)
    for theta in auc_interval(a, m, n):  # Hanley & McNeil (1982), eq. 2, with Q1, Q2 of the exponential model
        q1, q2 = theta / (2 - theta), 2 * theta ** 2 / (1 + theta)
        se = math.sqrt((theta * (1 - theta) + (m - 1) * (q1 - theta ** 2) + (n - 1) * (q2 - theta ** 2)) / (m * n))
        assert abs(a - theta) == pytest.approx(z * se)
    low, high = auc_interval(1.0, 4, 20)  # complete separation: a lower bound below 1, not a point
    assert high == 1.0 and 0.5 < low < 0.95
    assert all(math.isnan(v) for v in auc_interval(0.5, 0, 10))


def test_the_auc_interval_covers_at_the_grids_sizes():
    """Normal scores, the diverged group shifted by δ: true AUC Φ(δ/√2). m, n like the grids'
    (a few to 17 diverged runs, 12 to 100 completed); AUC is rank-based, so any monotone
    transform of the scores (lognormal, ...) gives the same coverage."""
    rng = np.random.default_rng(0)
    for m, n in [(3, 12), (4, 20), (8, 40), (17, 100)]:
        for shift in (0.0, 1.0, 2.5, 4.0):
            truth, covered, sims = stats.norm.cdf(shift / math.sqrt(2)), 0, 400
            for _ in range(sims):
                x, y = rng.normal(shift, 1, m), rng.normal(0, 1, n)
                low, high = auc_interval(float(np.mean(x[:, None] > y[None])), m, n)
                covered += low <= truth <= high
            assert covered / sims >= 0.93, (m, n, shift, covered / sims)
