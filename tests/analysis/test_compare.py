"""precisionlab.analysis.compare: two sweeps' reports side by side, on the known sweep of
tests/helpers/known_sweep.py and a second sweep recorded here."""

from __future__ import annotations

import math

import pytest

from helpers.known_sweep import SWEEP, known_config, known_store, record_run
from precisionlab.analysis.compare import compare, compare_notes
from precisionlab.analysis.report import build


@pytest.fixture
def store(tmp_path):
    return known_store(tmp_path)


def test_compare_two_sweeps(store):
    # sweep "other": e8m3 only, lr 1e-3 and 1e-2, one seed: 3.0 completed, 1e-2 diverged -> 1/2, sens mean(0, 2.5)
    record_run(store, known_config("e8m3", 1e-3, 0, "nearest_even"), "completed", 3.0, None, 0, sweep="other")
    record_run(store, known_config("e8m3", 1e-2, 0, "nearest_even"), "diverged", None, 12, 0, sweep="other")
    a, b = build(store, SWEEP), build(store, "other")
    table = compare(a, b).set_index("variant")
    assert list(table.index) == ["fp32", "e8m7", "e7m7", "e8m3"]
    row = table.loc["e8m3"]
    assert (row.diverged_a, row.finished_a, row.diverged_b, row.finished_b) == (2, 4, 1, 2)
    assert row.lr_sensitivity_a == pytest.approx(0.625) and row.lr_sensitivity_b == pytest.approx(1.25)
    # per LR: at 1e-3 nothing diverged, at 1e-2 everything did: no stratum says anything, p = 1
    assert row.p_a_more_diverged == pytest.approx(1.0) and row.p_b_more_diverged == pytest.approx(1.0)
    # paired over the seed both ran (seed 0): ΔS = 1.25 - 0 (a's seed 0: 6.0 capped at 5.5 and 5.5), and
    # the best-LR loss 3.0 - 6.0; one pair: no interval at all, the difference alone
    assert row.sensitivity_diff == pytest.approx(1.25) and row.loss_diff == pytest.approx(-3.0)
    assert row.sensitivity_diff_interval == "" and math.isnan(row.sensitivity_diff_low)
    assert math.isnan(table.loc["fp32", "finished_b"]) and math.isnan(table.loc["fp32", "p_a_more_diverged"])
    assert compare_notes(a, b) == []  # same LR grid, same steps and model in both
