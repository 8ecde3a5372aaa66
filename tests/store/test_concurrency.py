"""Several real processes on one store: overlapping sweeps and a report while a sweep runs.

Issue 17's first defect: two sweeps over overlapping grids on one store left runs `pending`
forever ("disk I/O error") because opening a store read its header with a plain open()/close(),
which dropped the other connection's POSIX locks. Each case is repeated on fresh stores."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import SWEEP_MICRO
from precisionlab.store import ResultsStore

CLI = str(Path(sys.executable).with_name("precisionlab"))
REPEATS = 3


def _sweep(cwd: Path, seeds: str, name: str, store: str = "store.path=store.db") -> subprocess.Popen:
    return subprocess.Popen([CLI, "sweep", store, f"sweep.name={name}", "precision.format=e8m7",
                             "optim.lr=3e-3", f"seed={seeds}", "train.threads=1", *SWEEP_MICRO],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())


@pytest.mark.slow
@pytest.mark.parametrize("repeat", range(REPEATS))
def test_two_sweeps_sharing_runs_compute_each_run_once_and_both_succeed(tmp_path, repeat):
    first = _sweep(tmp_path, "0,1,2,3", "first")
    second = _sweep(tmp_path, "2,3,4,5", "second")
    outputs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    runs = ResultsStore(tmp_path / "store.db", read_only=True).runs()
    assert sorted(runs.seed) == [0, 1, 2, 3, 4, 5]
    assert set(runs.status) <= {"completed", "diverged"} and list(runs.attempts) == [1] * 6, runs[["seed", "status", "attempts"]]
    assert not any("disk I/O error" in out or "not finished" in out for out in outputs), outputs


@pytest.mark.slow
def test_two_sweeps_sharing_runs_on_postgresql_compute_each_run_once(tmp_path, postgres_url):
    first = _sweep(tmp_path, "0,1,2,3", "first", f"store.url={postgres_url}")
    second = _sweep(tmp_path, "2,3,4,5", "second", f"store.url={postgres_url}")
    outputs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    runs = ResultsStore(postgres_url, read_only=True).runs()
    assert sorted(runs.seed) == [0, 1, 2, 3, 4, 5]
    assert set(runs.status) <= {"completed", "diverged"} and list(runs.attempts) == [1] * 6, runs[["seed", "status", "attempts"]]
    assert not any("not finished" in out for out in outputs), outputs


@pytest.mark.slow
def test_reports_while_a_sweep_runs_lose_nothing(tmp_path):
    sweep = _sweep(tmp_path, "0,1,2,3,4,5", "busy")
    while not (tmp_path / "store.db").exists():
        time.sleep(0.1)
    reports = 0
    while sweep.poll() is None:
        done = subprocess.run([CLI, "report", "--store", "store.db", "--out", f"r{reports}"], cwd=tmp_path,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr  # a report of what exists, also mid-sweep
        reports += 1
    assert sweep.returncode == 0, sweep.stdout.read()
    runs = ResultsStore(tmp_path / "store.db", read_only=True).runs()
    assert reports >= 1 and len(runs) == 6 and set(runs.status) <= {"completed", "diverged"}
    assert list(runs.attempts) == [1] * 6
