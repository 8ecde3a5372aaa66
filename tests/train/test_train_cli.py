"""`precisionlab train` through the installed console script, in a temporary working directory."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import MICRO

CLI = str(Path(sys.executable).with_name("precisionlab"))


def _train(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "train", *overrides], cwd=cwd, capture_output=True, text=True, env=os.environ.copy(), timeout=300)


def test_train_writes_the_run_directory(tmp_path):
    proc = _train(tmp_path, *MICRO, "precision=mask", "precision.format=e8m3", "seed=2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("completed: 10 steps, final train loss ")
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["config"]["precision"]["x"] == "e8m3"
    with open(run_dir / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r["split"] == "train"]
    assert steps == list(range(1, 11))
    assert "Traceback" not in proc.stderr


def test_relative_data_path_is_taken_from_the_launch_directory(tmp_path):
    (tmp_path / "corpus.txt").write_text("hello precision " * 200)
    proc = _train(tmp_path, *MICRO, "data=text", "data.path=corpus.txt")
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    assert json.loads((run_dir / "run.json").read_text())["data"]["path"] == str(tmp_path / "corpus.txt")


@pytest.mark.parametrize("overrides, expected", [
    (["precision.format=e9m3"], "format 'e9m3' is out of range; accepted: fp32"),
    (["optim.lr=-1"], "optim.lr must be a positive number"),
    (["train.stepz=5"], "train.stepz is not a config key; train takes steps, batch_size, "),
    (["model=huge"], "Available options in 'model'"),
    (["data=text", "data.path=/no/such/corpus"], "data.path '/no/such/corpus' does not exist"),
    (["data=tokens"], "data=tokens needs data.path"),
    (["optim.master_format=mxfp8"], "optim.master_format takes an element format (bf16, fp16, e5m2, ...), not a block format; got 'mxfp8'"),
    (["optim.master_rounding=up"], "optim.master_rounding must be one of nearest_even, stochastic; got 'up'"),
    (["diagnostics.every=-1"], "diagnostics.every must be an integer >= 0 (0: off); got -1"),
    (["diagnostics.families=[casts,spectra]"], "diagnostics.families must be a non-empty list of casts, grad_fidelity, "
                                                "proxies, e.g. [casts,proxies]; got ['casts', 'spectra']"),
    (["diagnostics.families=[]"], "diagnostics.families must be a non-empty list"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, overrides, expected):
    proc = _train(tmp_path, *overrides)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], proc.stderr
    assert not (tmp_path / "outputs").exists()  # nothing half-written
