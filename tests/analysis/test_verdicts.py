"""precisionlab.analysis.verdicts: per-variant verdicts, their tests and reasons, on the known and
planted sweeps of tests/helpers/known_sweep.py (hand-worked values there). The verdicts' error
rates and power by simulation are in test_verdict_family.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from helpers.known_sweep import L0, SWEEP, known_store, planted_store
from precisionlab.analysis.report import build
from precisionlab.analysis.stats import fisher_two_sided


@pytest.fixture
def store(tmp_path):
    return known_store(tmp_path)


def test_per_format_table_and_verdicts(store):
    report = build(store, SWEEP)
    table = report.by_variant.set_index("variant")
    assert list(table.index) == ["fp32", "e8m7", "e7m7", "e8m3"] and report.reference == "fp32"
    expected_sensitivity = {"fp32": 0.2, "e8m7": 0.65, "e8m3": 0.625, "e7m7": 0.025}
    for variant, value in expected_sensitivity.items():
        assert table.loc[variant, "lr_sensitivity"] == pytest.approx(value), variant
    assert table.loc["fp32", "best_lr"] == 1e-3 and table.loc["fp32", "seed_std"] == pytest.approx(0.1414213562)
    assert table.loc["e7m7", "best_lr"] == 1e-3 and table.loc["e8m3", "best_lr"] == 1e-3
    assert table.loc["e8m3", "best_lr_loss"] == pytest.approx(4.5)
    assert (table.loc["e8m3", "diverged"], table.loc["e8m3", "finished"], table.loc["e8m3", "diverged_frac"]) == (2, 4, 0.5)
    assert (table.loc["e7m7", "finished"], table.loc["e7m7", "failed"]) == (3, 1)
    assert (table.loc["e8m3", "stable_lrs"], table.loc["e8m3", "lrs"]) == (1, 2)
    assert table.loc["e8m7", "initial_loss"] == pytest.approx(L0)
    assert list(table.verdict) == ["reference"] + ["too few seeds to test"] * 3
    assert (table.loc["e8m7", "lr_sensitivity_low"], table.loc["e8m7", "lr_sensitivity_high"]) == pytest.approx((0.1, 1.2))
    assert (table.loc["fp32", "lr_sensitivity_low"], table.loc["fp32", "lr_sensitivity_high"]) == pytest.approx((0.2, 0.2))
    assert set(table.lr_sensitivity_interval) == {"range", ""}  # 2 seeds: ranges; e7m7's one seed: none
    assert table.loc["e7m7", "lr_sensitivity_interval"] == "" and np.isnan(table.loc["e7m7", "lr_sensitivity_low"])
    assert table.loc["e8m7", "sensitivity_diff"] == pytest.approx(0.45) and table.loc["e8m7", "p_sensitivity"] == 1.0
    assert table.loc["e7m7", "paired_seeds"] == 1  # seed 1 failed at 1e-2: only seed 0 finished both LRs
    assert "diverged 1/4 vs 0/4" in table.loc["e8m7", "reason"] and "ΔS = +0.450 (range -0.100 to +1.000)" in table.loc["e8m7", "reason"]
    assert report.headline().startswith("Against fp32 (reference; 2 paired seeds, Holm-adjusted α = 0.05): Too few seeds to test: e8m7")
    assert "loss not tested: at most 2 seeds completed in both at an LR (the paired t test needs 3)" in table.loc["e8m7", "reason"]
    assert "With 2 paired seeds the loss is not tested: the paired t test needs 3" in report.headline()
    # no test here can reach 0.05 (2 seeds: a ΔS test's floor is 1/2; the divergence counts' floors are above 0.05)
    assert ("With 2 paired seeds, the smallest adjusted p the LR-sensitivity test can reach is 0.5 (≥ α = 0.05; "
            "no test here can reach α)") in report.headline()
    assert any("1 run(s) failed" in note for note in report.notes)


def test_verdict_reasons_carry_the_holm_adjusted_p_values(store):
    table = build(store, SWEEP).by_variant.set_index("variant")
    assert math.isnan(table.loc["fp32", "p_more_diverged"])
    # stratified by LR: at 1e-3 nothing diverged (no information), at 1e-2 e8m3 2/2 against fp32 0/2:
    # one table with margins 2 of 4 diverged, P(both in e8m3) = 1 / C(4, 2); pooled it would be 2/4 vs 0/4
    assert table.loc["e8m3", "p_more_diverged"] == pytest.approx(1 / 6)
    assert table.loc["e8m3", "p_diverged"] == pytest.approx(2 / 6)  # two-sided: 2/2 vs 0/2 or 0/2 vs 2/2
    assert table.loc["e8m3", "p_diverged_holm"] >= table.loc["e8m3", "p_diverged"]
    assert f"diverged 1/4 vs 0/4, Holm p = {table.loc['e8m7', 'p_diverged_holm']:.2g}" in table.loc["e8m7", "reason"]


def test_a_planted_difference_is_less_stable_and_a_null_one_is_not(tmp_path):
    report = build(planted_store(tmp_path), "planted")
    table = report.by_variant.set_index("variant")
    assert table.loc["e8m3", "verdict"] == "less stable"
    # ΔS: e8m3's ℓ(1e-2) is ℓ₀ = 5.5, so its sensitivity is about (5.5 - 3.0) / 2 against fp32's 0.15
    assert table.loc["e8m3", "sensitivity_diff"] == pytest.approx(1.1, abs=0.05)
    assert table.loc["e8m3", "p_sensitivity"] == 2 / 2**8 and table.loc["e8m3", "sensitivity_diff_low"] > 0
    assert table.loc["e8m3", "p_diverged"] == pytest.approx(fisher_two_sided(8, 8, 0, 8))  # the 1e-2 stratum
    assert table.loc["e8m7", "verdict"] == "no difference detected"
    assert table.loc["e8m7", "sensitivity_diff_low"] <= 0 <= table.loc["e8m7", "sensitivity_diff_high"]
    # decided by the divergence test (8/8 against 0/8 at 1e-2, p = 2 / C(16, 8) before Holm); ΔS's
    # exact p of 2/256 is Holm-adjusted over the family's 9 tests that can reach α (e8m3's divergence
    # test, 2 ΔS, 6 loss tests of the twins' curves, none of them small; e8m7's divergence test is
    # left out: no run of it or the reference diverged, its p is 1 whatever happens) to 8 x 2/256 =
    # 0.0625: not decisive
    assert table.loc["e8m3", "decided_by"] == "divergence"
    assert table.loc["e8m3", "p_sensitivity_holm"] == pytest.approx(8 * 2 / 2**8)
    assert "Less stable: e8m3 (by divergence: diverged 8/16 vs 0/16, Holm p = " in report.headline()
    assert ". No difference detected: e8m7" in report.headline()
