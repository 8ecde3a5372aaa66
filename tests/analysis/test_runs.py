"""precisionlab.analysis.runs: a sweep's runs, sharpness values and branches' parent curves read from
the store, on the known sweep of tests/helpers/known_sweep.py."""

from __future__ import annotations

import pandas as pd
import pytest

from helpers.known_sweep import SWEEP, known_config, known_store
from precisionlab.analysis.report import ReportError, build
from precisionlab.analysis.runs import parent_curves, sharpness, sweep_runs
from precisionlab.store import ResultsStore, run_id


@pytest.fixture
def store(tmp_path):
    return known_store(tmp_path)


def test_empty_store_unknown_sweep_and_empty_selection(tmp_path, store):
    with pytest.raises(ReportError, match="holds no sweeps"):
        build(ResultsStore(tmp_path / "empty.db"))
    with pytest.raises(ReportError, match=r"unknown sweep 'nope'.*sweeps there: known"):
        build(store, "nope")
    with pytest.raises(ReportError, match="no runs matching"):
        build(store, SWEEP, ["format=e5m2"])
    assert build(store).sweep == SWEEP  # the latest by default


def test_sweep_runs_filters_and_counts(store):
    name, runs, total = sweep_runs(store, None, ["lr=0.01"])
    assert (name, total) == (SWEEP, 16)  # the latest sweep, all 16 runs before the filter
    assert len(runs) == 8 and set(runs.lr) == {1e-2}
    assert {"variant", "format", "capped_loss"} <= set(runs.columns)  # labelled


def test_sharpness_is_joined_with_its_run_and_labelled_by_its_parameters(store):
    _, runs, _ = sweep_runs(store, SWEEP)
    rid = runs.set_index(["format", "lr", "seed"]).run_id[("e8m7", 1e-3, 1)]
    store.add_sharpness(rid, 10, "logit", 2.5, {"eps": 1e-3, "iters": 20})
    assert sharpness(store, runs[runs.run_id != rid]).empty
    (row,) = sharpness(store, runs).itertuples()
    assert (row.variant, row.lr, row.seed, row.status, row.value) == ("e8m7", 1e-3, 1, "completed", 2.5)
    assert row.params == "eps=0.001, iters=20"


def test_parent_curves_stop_at_the_branch_step(store):
    cfg = known_config("e5m2", 1e-3, 0)  # a parent in another sweep than the report's
    parent = run_id(cfg)
    assert store.claim_run(parent, cfg, "parents")
    with store.recorder(parent) as rec:
        for step, loss in ((10, 4.5), (20, 4.0), (30, 3.5), (40, 3.0)):
            rec.log(step, "train", {"loss": loss})
        rec.log(20, "val", {"loss": 3.9})  # not a train loss: not drawn
        rec.finish({"status": "completed"})
    branches = pd.DataFrame({"run_id": ["child"], "parent_run_id": [parent], "branch_step": [30]})
    curve = parent_curves(store, branches)
    assert curve.run_id.tolist() == ["child"] * 3 and curve.step.tolist() == [10, 20, 30]  # after 30: the branch's own
    assert curve.loss.tolist() == pytest.approx([4.5, 4.0, 3.5])
    assert parent_curves(store, branches.iloc[:0]).empty
