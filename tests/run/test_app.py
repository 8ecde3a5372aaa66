"""The Hydra task of `precisionlab train` (precisionlab.run.app).
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from helpers import MICRO, compose_train, one_line_exit_2
from precisionlab.cli import app
from precisionlab.config import validate
from precisionlab.store import ResultsStore, run_id


@pytest.mark.parametrize("race", [False, True])
def test_second_train_of_a_running_run_leaves_nothing(tmp_path, monkeypatch, race):
    """Another live process trains the run: one line, exit 2, and no Hydra run folder (before, one was
    left). race: both `train`s passed the CLI's check before either claimed; the claim refuses it."""
    monkeypatch.chdir(tmp_path)
    args = [*MICRO, "precision=mask", "precision.format=e8m3", f"store.path={tmp_path / 's.db'}"]
    store = ResultsStore(tmp_path / "s.db")
    cfg = validate(compose_train(*args[len(MICRO):]))
    assert store.claim_run(run_id(cfg), cfg)  # this process: alive, heartbeat now
    if race:
        monkeypatch.setattr(ResultsStore, "running", lambda self, ids: (set(), set()))
    result = CliRunner().invoke(app, ["train", *args])
    one_line_exit_2(result, "is being trained by another live process")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("s.db")) == []
    assert store.status(run_id(cfg)) == "running"
