"""Checkpoint files (precisionlab.train.checkpoint).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers.checkpoints import stored_run
from precisionlab.store import ResultsStore


@pytest.mark.slow
def test_runs_sharing_a_checkpoint_dir_write_files_of_their_own(tmp_path):
    """Two runs given one absolute train.checkpoint_dir (the defect: the second overwrote the first's
    step_0000004.pt): each saves under a folder named by its run id."""
    from precisionlab.store import run_id

    store = ResultsStore(tmp_path / "r.db")
    shared = tmp_path / "checkpoints"
    configs = [stored_run(store, shared, f"seed={seed}")[0] for seed in (0, 1)]
    paths = [Path(store.checkpoints(run_id(cfg)).path.iloc[0]) for cfg in configs]
    assert paths == [shared / run_id(cfg) / "step_0000004.pt" for cfg in configs]
    assert all(torch.load(p, weights_only=True)["run_id"] == run_id(cfg) for p, cfg in zip(paths, configs))
