"""The tracker recorder (precisionlab.store.trackers): what is refused before a run, and faults while it runs.

A tracker that fails while a run trains gives one warning and nothing more; the run and its store record
go on as without it. A tracker that cannot work at all (unknown, package missing, malformed MLflow URI) is
refused by the config's checks: one line, exit 2, nothing written. What each tracker receives, read back
with the tracker's own reader: tests/store/test_tracker_backends.py.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from helpers import MICRO, compose_train, one_line_exit_2
from precisionlab.cli import app
from precisionlab.config import ConfigError, validate
from precisionlab.store import ResultsStore, run_id
from precisionlab.store import trackers
from precisionlab.store.trackers import TrackerRecorder, tracker_problem


def test_trackers_are_not_part_of_a_runs_identity():
    plain = validate(compose_train())
    logged = validate(compose_train("train.loggers=[tensorboard]", "loggers.dir=elsewhere",
                                    "loggers.wandb_project=p", "loggers.mlflow_uri=http://host:5000"))
    assert list(logged.train.loggers) == ["tensorboard"] and logged.loggers.dir.endswith("elsewhere")
    assert run_id(plain) == run_id(logged)


@pytest.mark.parametrize("names, uri, fragment", [
    (["tensorboard", "neptune"], None, "train.loggers must be a list of tensorboard, mlflow, wandb"),
    (["mlflow"], "bogus://host", "loggers.mlflow_uri must be a folder, file:///PATH, http(s)://HOST"),
    (["mlflow"], "http://", "loggers.mlflow_uri must name a host"),
    (["mlflow"], "http:///path", "loggers.mlflow_uri must name a host"),
])
def test_unusable_trackers_are_named(names, uri, fragment):
    assert fragment in tracker_problem(names, uri)


@pytest.mark.parametrize("uri", [None, "http://127.0.0.1:5000", "https://mlflow.example.org", "file:///tmp/mlruns",
                                 "/tmp/mlruns", "databricks"])
def test_usable_mlflow_uris_pass(uri, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())  # every package "installed"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracker_problem(["mlflow"], uri) is None


def test_the_environments_mlflow_uri_is_checked_too(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nope://x")
    assert "$MLFLOW_TRACKING_URI must be" in tracker_problem(["mlflow"], None)
    assert tracker_problem(["mlflow"], "http://host:5000") is None  # the config's URI wins over the environment's


@pytest.mark.parametrize("missing, names, extra", [
    ("wandb", ["tensorboard", "wandb"], "wandb"), ("tensorboard", ["tensorboard"], "tensorboard"),
    ("mlflow", ["mlflow"], "mlflow"), ("sqlalchemy", ["mlflow"], "mlflow"),  # the default SQLite store needs it
])
def test_a_missing_package_names_the_extra(missing, names, extra, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    problem = tracker_problem(names, None)
    assert f'pip install "precisionlab[{extra}]"' in problem and missing in problem


def test_a_server_uri_needs_no_database_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sqlalchemy" else real(name, *a))
    if real("mlflow") is None:
        pytest.skip("mlflow is not installed")
    assert tracker_problem(["mlflow"], "http://127.0.0.1:5000") is None


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_train_and_sweep_refuse_a_tracker_without_its_package(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    result = CliRunner().invoke(app, [command, *MICRO, "train.loggers=[wandb]"])
    one_line_exit_2(result, 'train.loggers names wandb, but the wandb package is not installed; pip install "precisionlab[wandb]"')
    assert list(tmp_path.iterdir()) == []  # no run directory, no store


def test_train_refuses_a_malformed_mlflow_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", *MICRO, "train.loggers=[mlflow]", "loggers.mlflow_uri=htp:/x"])
    one_line_exit_2(result, "loggers.mlflow_uri must be")
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_an_unknown_tracker_and_a_missing_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_exit_2(CliRunner().invoke(app, ["export", "--to", "neptune"]), "--to must be one of tensorboard, mlflow, wandb")
    one_line_exit_2(CliRunner().invoke(app, ["export", "--to", "tensorboard", "--store", "none.db"]), "does not exist")
    assert list(tmp_path.iterdir()) == []


class Raising:
    """A tracker that raises on every call."""

    name = "broken"

    def __init__(self):
        self.calls = 0

    def __getattr__(self, method):
        def fail(*args):
            self.calls += 1
            raise ConnectionError(f"{method} refused\nsecond line")
        return fail


def test_a_failing_tracker_warns_once_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    from precisionlab.run.job import recorded_run
    from precisionlab.train.rundir import RunDirRecorder

    backends = []
    monkeypatch.setattr(trackers, "make_backend", lambda name, settings: backends.append(Raising()) or backends[-1])
    cfg = validate(compose_train("train.loggers=[tensorboard,wandb]", "diagnostics.every=5", "sharpness.every=5",
                                 f"store.path={tmp_path / 's.db'}"))
    store = ResultsStore(tmp_path / "s.db")
    with caplog.at_level(logging.WARNING):
        result = recorded_run(cfg, store, RunDirRecorder(tmp_path / "run"))
    assert result.status == "completed" and result.steps_done == 10
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    rid = run_id(cfg)
    assert warnings == [f"broken logger off for run {rid}: ConnectionError: open refused"] * 2
    assert [b.calls for b in backends] == [2, 2]  # open, then abandon: never called again
    assert store.status(rid) == "completed"
    assert store.metrics(rid, split="train").step.tolist() == list(range(1, 11))
    assert len(store.diagnostics(rid)) > 0 and len(store.sharpness(rid)) == 2


def test_a_tracker_failing_mid_run_sends_nothing_more(caplog):
    class FailsAtStep3:
        name = "flaky"

        def __init__(self):
            self.steps, self.abandoned = [], False

        def open(self, *args):
            pass

        def scalars(self, step, values):
            if step == 3:
                raise OSError("disk gone")
            self.steps.append(step)

        def close(self, *args):
            raise AssertionError("closed after failing")

        def abandon(self):
            self.abandoned = True

    backend = FailsAtStep3()
    recorder = TrackerRecorder(backend, "r1", "s")
    recorder.start({"config": {}})
    for step in range(1, 6):
        recorder.log(step, "train", {"loss": 1.0})
    recorder.finish({"status": "completed", "steps_done": 5})
    assert backend.steps == [1, 2] and backend.abandoned and recorder.failure == "OSError: disk gone"
    assert [r.getMessage() for r in caplog.records] == ["flaky logger off for run r1: OSError: disk gone"]


def test_nan_and_missing_values_are_not_sent():
    class Keeps:
        name = "memory"

        def __init__(self):
            self.sent = []

        def open(self, *args):
            pass

        def scalars(self, step, values):
            self.sent.append((step, values))

        def close(self, *args):
            pass

    backend = Keeps()
    recorder = TrackerRecorder(backend, "r1", None)
    recorder.start({"config": {}})
    recorder.log(1, "train", {"loss": float("nan"), "lr": 0.5, "grad_norm": None, "tokens": 64})
    recorder.log(2, "train", {"loss": float("nan")})
    recorder.diagnostics(2, [("blocks.0.attn/fwd_x", "saturated", 0.25)])
    recorder.finish({"status": "diverged", "steps_done": 2, "diverged_step": 2, "final_train_loss": float("nan")})
    assert backend.sent == [(1, {"train/lr": 0.5, "train/tokens": 64.0}),
                            (2, {"diagnostics/saturated/blocks.0.attn_fwd_x": 0.25}),
                            (2, {"outcome/steps_done": 2.0, "outcome/diverged_step": 2.0})]
    assert recorder.group == "train"  # precisionlab train's runs: no sweep


def test_a_run_that_never_started_sends_nothing():
    backend = Raising()
    TrackerRecorder(backend, "r1", "s").finish({"status": "failed", "error": "DataError: no data"})
    assert backend.calls == 0


@pytest.mark.slow
def test_an_unreachable_mlflow_server_does_not_hold_the_run_up(tmp_path, caplog):
    """Port 9 (discard) of this machine: refused at once; MLflow's retries are set low (the user's own win)."""
    from precisionlab.run.job import recorded_run
    from precisionlab.train.rundir import RunDirRecorder

    from helpers.extras import require

    require("mlflow")
    cfg = validate(compose_train("train.loggers=[mlflow]", "loggers.mlflow_uri=http://127.0.0.1:9",
                                 f"store.path={tmp_path / 's.db'}"))
    store = ResultsStore(tmp_path / "s.db")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        result = recorded_run(cfg, store, RunDirRecorder(tmp_path / "run"))
    assert time.monotonic() - started < 120  # a liveness bound (minutes of retries), not a speed goal
    assert result.status == "completed" and store.status(run_id(cfg)) == "completed"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(f"mlflow logger off for run {run_id(cfg)}: "), warnings


def test_importing_precisionlab_imports_no_tracker():
    code = ("import sys, precisionlab.cli, precisionlab.run.job, precisionlab.store.trackers, "
            "precisionlab.store.tracker_backends, precisionlab.config\n"
            "print(sorted(m for m in ('tensorboard', 'mlflow', 'wandb', 'torch.utils.tensorboard') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_config_check_names_the_key():
    with pytest.raises(ConfigError, match="train.loggers must be a list of"):
        validate(compose_train("train.loggers=[tensorbord]"))
