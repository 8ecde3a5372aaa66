"""precisionlab.analysis.estimates: the per-(variant, LR) table, convergence and sharpness per step,
on the known sweep of tests/helpers/known_sweep.py (hand-worked values there)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from helpers.known_sweep import L0, SWEEP, known_store
from precisionlab.analysis.report import build


@pytest.fixture
def store(tmp_path):
    return known_store(tmp_path)


def test_per_format_and_lr_table(store):
    table = build(store, SWEEP).by_lr.set_index(["variant", "lr"])
    assert list(dict.fromkeys(table.index.get_level_values(0))) == ["fp32", "e8m7", "e7m7", "e8m3"]
    row = table.loc[("e8m7", 1e-2)]
    assert (row.runs, row.finished, row.diverged, row.failed) == (2, 2, 1, 0)
    assert row.diverged_frac == 0.5 and row.median_diverged_step == 40
    assert row.final_loss_mean == pytest.approx(3.5) and math.isnan(row.final_loss_std) and row.final_loss_n == 1
    assert row.lr_loss == pytest.approx(4.5)
    row = table.loc[("e8m3", 1e-2)]
    assert (row.diverged, row.finished, row.median_diverged_step, row.final_loss_n) == (2, 2, 40, 0)
    assert math.isnan(row.final_loss_mean) and row.lr_loss == pytest.approx(L0)
    row = table.loc[("e8m3", 1e-3)]  # the mean of final losses is uncapped; ℓ(η) is capped
    assert row.final_loss_mean == pytest.approx(4.5) and row.final_loss_std == pytest.approx(np.std([6.0, 3.0], ddof=1))
    assert row.lr_loss == pytest.approx(4.25)
    row = table.loc[("e7m7", 1e-2)]
    assert (row.runs, row.finished, row.failed, row.lr_loss) == (2, 1, 1, pytest.approx(3.35))
    assert table.loc[("fp32", 1e-2)].final_loss_std == pytest.approx(np.std([3.4, 3.6], ddof=1))
    assert table.loc[("e8m7", 1e-3)].spikes == 3


def test_diverged_and_did_not_converge_are_apart(store):
    # The reference fp32's loss at its best LR (1e-3) is 3.1: a completed run must end below
    # ℓ₀ - 0.5 (ℓ₀ - 3.1) = 4.3. e8m3 seed 0 at 1e-3 ended at 6.0: did not converge.
    report = build(store, SWEEP)
    outcome = report.runs.set_index(["variant", "lr", "seed"]).outcome
    assert outcome[("e8m3", 1e-3, 0)] == "did not converge" and outcome[("e8m3", 1e-3, 1)] == "converged"
    assert outcome[("e8m3", 1e-2, 0)] == "diverged" and outcome[("e7m7", 1e-2, 1)] == "failed"
    assert (report.runs.outcome == "did not converge").sum() == 1
    assert report.by_variant.set_index("variant").not_converged.to_dict() == {"fp32": 0, "e8m7": 0, "e7m7": 0, "e8m3": 1}
    assert report.by_lr.set_index(["variant", "lr"]).not_converged[("e8m3", 1e-3)] == 1


def test_sharpness_per_format_and_step(store):
    runs = build(store, SWEEP).runs.set_index(["format", "lr", "seed"])
    values = {("e8m7", 1e-3, 0): (1.0, 3.0), ("e8m7", 1e-3, 1): (2.0, 5.0), ("e8m3", 1e-3, 0): (4.0, 4.0)}
    for key, (at10, at20) in values.items():
        store.add_sharpness(runs.loc[key, "run_id"], 10, "logit", at10, {"eps": 1e-3})
        store.add_sharpness(runs.loc[key, "run_id"], 20, "logit", at20, {"eps": 1e-3})
    steps = build(store, SWEEP).sharpness_steps.set_index(["variant", "step"])
    assert set(steps.metric) == {"logit"} and set(steps.params) == {"eps=0.001"}
    assert steps.loc[("e8m7", 20), "mean"] == pytest.approx(4.0) and steps.loc[("e8m7", 20), "n"] == 2
    assert steps.loc[("e8m7", 10), "std"] == pytest.approx(np.std([1.0, 2.0], ddof=1))
    assert steps.loc[("e8m3", 10), "mean"] == 4.0 and steps.loc[("e8m3", 10), "n"] == 1
    assert list(dict.fromkeys(steps.index.get_level_values(0))) == ["e8m7", "e8m3"]
