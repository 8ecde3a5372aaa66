"""A sweep's progress and end-of-sweep summary (precisionlab.sweep.progress).
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from helpers import SWEEP_MICRO
from precisionlab.cli import app
from precisionlab.store import ResultsStore, StoreError


@pytest.mark.slow
def test_sweep_with_runs_left_pending_exits_1(tmp_path, monkeypatch):
    """Jobs that could not even record their failure leave runs pending: the sweep says so and exits 1."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ResultsStore, "claim_run", lambda *a, **k: (_ for _ in ()).throw(StoreError("locked out")))
    monkeypatch.setattr(ResultsStore, "fail_pending", lambda *a, **k: (_ for _ in ()).throw(StoreError("locked out")))
    result = CliRunner().invoke(app, ["sweep", "seed=0,1", "precision.format=e8m3", "optim.lr=1e-3",
                                      "sweep.name=stuck", *SWEEP_MICRO])
    assert result.exit_code == 1, result.output
    assert "sweep stuck: 2 runs not finished: 2 never started" in result.stderr
