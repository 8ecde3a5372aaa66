"""`precisionlab frontier`'s runs as small sweeps (precisionlab.sweep.frontier_runs)."""

from __future__ import annotations

import pytest

from precisionlab.sweep.frontier import make_axis


@pytest.mark.slow
def test_frontier_runs_have_the_ids_of_the_same_sweep_runs(tmp_path):
    """The runs `precisionlab sweep` plans for the same formats, LR, seeds and overrides are the ones the
    frontier looks up and launches (its sweep's name is not part of a run id): reused, never rerun."""
    from precisionlab.sweep.frontier_runs import FrontierRuns
    from precisionlab.sweep.plan import plan

    overrides = ["train.steps=50", f"store.path={tmp_path / 's.db'}"]
    runs = FrontierRuns(make_axis("e8m7", "mantissa", [3, 1]), "3e-3", overrides, "frontier-mantissa", 4)
    grid = plan(["precision.format=e8m7,e8m3,e8m1", "optim.lr=3e-3", "seed=0,1,2,3", *overrides])
    assert grid.name != "frontier-mantissa"
    assert [runs.run_id(w, s) for w in (7, 3, 1) for s in range(4)] == grid.run_ids
    assert not (tmp_path / "s.db").exists()
