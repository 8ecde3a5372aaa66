"""A sweep's progress and end-of-sweep summary (precisionlab.sweep.progress): runs left pending are
said and exit 1; `complete` waits for runs other processes train and resumes interrupted ones once.
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


class _ScriptedStore:
    """`running()` answers from a script: one (alive, interrupted) pair per call, the last one repeating."""

    def __init__(self, *answers):
        self.answers, self.calls = list(answers), 0

    def running(self, run_ids):
        self.calls += 1
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


class _Grid:
    name, runs = "g", ["a", "b"]


@pytest.mark.parametrize("answers, launches", [
    ([(set(), set())], 1),                                        # all done by this sweep
    ([({"a"}, set()), ({"a"}, set()), (set(), set())], 1),        # "a" computed by another process: wait
    ([(set(), {"a"}), (set(), set())], 2),                        # "a" interrupted: resumed once
    ([({"b"}, set()), (set(), {"b"}), (set(), set())], 2),        # the other process died: resumed here
    ([(set(), {"a"})], 2),                                        # still interrupted: no endless relaunching
])
def test_complete_waits_for_other_processes_and_resumes_interrupted_runs(answers, launches):
    from precisionlab.sweep.progress import complete

    launched, lines = [], []
    store = _ScriptedStore(*answers)
    complete(store, _Grid(), lambda: launched.append(1), poll=0, stream=type("S", (), {
        "write": lambda self, text: lines.append(text), "flush": lambda self: None})())
    assert len(launched) == launches
    assert any("waiting for 1 runs" in line for line in lines) == any(alive for alive, _ in answers)
