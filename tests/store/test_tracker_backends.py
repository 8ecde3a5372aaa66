"""What TensorBoard, MLflow and W&B receive, read back with each tool's own reader.

A sweep of 2 micro runs (diagnostics and sharpness on) with all three loggers on; every series each tracker
holds must equal the store's: the metrics table (train/loss, lr, grad_norm, tokens, elapsed; val/loss), the
diagnostics and sharpness tables, and the runs table's outcome. The expected series are built here from the
store's tables, not through precisionlab.store.trackers.replay. Then `precisionlab export` of the same store
into fresh folders must equal the live logs, and a second export must replace, not duplicate.

Readers: TensorBoard's EventAccumulator; MLflow's MlflowClient on the SQLite store; for W&B, the offline
run file parsed with wandb's protobuf messages (helpers.wandb_offline says why and how).
"""

from __future__ import annotations

import glob
import math
import os
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from helpers import SWEEP_MICRO
from helpers.extras import require
from precisionlab.cli import app
from precisionlab.store import ResultsStore

LOGGERS = "train.loggers=[tensorboard,mlflow,wandb]"
OUTCOME = ("steps_done", "final_train_loss", "final_val_loss", "min_val_loss", "initial_loss", "diverged_step", "spikes")


def _name(*parts) -> str:
    """A series name as the trackers get it: parts joined by '/', other characters than [\\w.- ] as '_'."""
    return "/".join(re.sub(r"[^\w.\- ]", "_", str(p)) for p in parts)


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def expected_series(store: ResultsStore, run) -> dict[str, list[tuple[int, float]]]:
    """Every series of stored run `run` (a row of store.runs()): name -> [(step, value)] by step."""
    series: dict[str, list] = {}
    rid = run["run_id"]
    for row in store.metrics(rid).to_dict("records"):
        for key in ("loss", "lr", "grad_norm", "tokens", "elapsed"):
            if _present(row[key]):
                series.setdefault(f"{row['split']}/{key}", []).append((row["step"], float(row[key])))
    for row in store.diagnostics(rid).to_dict("records"):
        if _present(row["value"]):
            series.setdefault(_name("diagnostics", row["name"], row["site"]), []).append((row["step"], row["value"]))
    for row in store.sharpness(rid).to_dict("records"):
        label = "_".join(f"{k}_{v}" for k, v in sorted(row["params"].items()))
        series.setdefault(_name("sharpness", row["metric"], label), []).append((row["step"], row["value"]))
    for key in OUTCOME:
        if _present(run[key]):
            series[f"outcome/{key}"] = [(int(run["steps_done"]), float(run[key]))]
    return {k: sorted(v) for k, v in series.items()}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """(folder, store, runs): a 2-run sweep with all three loggers on; W&B offline."""
    for name in ("tensorboard", "mlflow", "wandb"):
        require(name)
    root = tmp_path_factory.mktemp("live")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.setenv("WANDB_MODE", "offline")
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        result = CliRunner().invoke(app, ["sweep", "precision.format=e8m3", "optim.lr=1e-2,1e-3", "seed=0",
                                          "train.threads=1", "diagnostics.every=4", "sharpness.every=4",
                                          "sweep.name=logged", LOGGERS, *SWEEP_MICRO])
        assert result.exit_code == 0, result.output
        store = ResultsStore(root / "results" / "precisionlab.db")
        yield root, store, store.runs(sweep="logged")
    finally:
        mp.undo()


def export(root, to: str, out: str) -> None:
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    try:
        result = CliRunner().invoke(app, ["export", "--to", to, "--dir", out])
        assert result.exit_code == 0, result.output
        assert "exported 2 runs of sweep logged" in result.stdout
    finally:
        mp.undo()


# ---- the three readers: name -> [(step, value)] of one run


def tensorboard_series(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: sorted((e.step, e.value) for e in acc.Scalars(tag)) for tag in acc.Tags()["scalars"]}


def mlflow_runs(uri: str, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment} at {uri}"
    return client.search_runs([found.experiment_id])


def mlflow_series(uri: str, run) -> dict[str, list[tuple[int, float]]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            for key in run.data.metrics}


def wandb_files(folder, rid: str) -> list[str]:
    return glob.glob(os.path.join(folder, "wandb", f"offline-run-*-{rid}", f"run-{rid}.wandb"))


def as_float32(series):
    """TensorBoard keeps scalars as 32-bit floats."""
    return {k: [(s, float(np.float32(v))) for s, v in points] for k, points in series.items()}


# ---- live: each tracker holds what the store holds


@pytest.mark.slow
def test_tensorboard_holds_every_stored_series(live):
    root, store, runs = live
    assert len(runs) == 2
    for run in runs.to_dict("records"):
        expected = expected_series(store, run)
        assert {"train/loss", "val/loss", "train/grad_norm", "outcome/final_val_loss"} <= set(expected)
        assert any(k.startswith("diagnostics/") for k in expected) and any(k.startswith("sharpness/") for k in expected)
        folder = root / "runs" / "logged" / run["run_id"]
        assert len(list(folder.glob("events.out.tfevents.*"))) == 1
        assert tensorboard_series(folder) == as_float32(expected)


@pytest.mark.slow
def test_mlflow_holds_every_stored_series_and_the_config(live):
    root, store, runs = live
    uri = f"sqlite:///{root / 'runs' / 'mlflow.db'}"
    found = {r.data.tags["precisionlab.run_id"]: r for r in mlflow_runs(uri, "logged")}  # experiment = the sweep
    assert set(found) == set(runs.run_id)
    flat = store.runs(sweep="logged", expand_config=True)
    for run in flat.to_dict("records"):
        mlrun = found[run["run_id"]]
        assert mlflow_series(uri, mlrun) == expected_series(store, run)
        assert mlrun.data.tags["status"] == run["status"] and mlrun.info.status == "FINISHED"
        params = mlrun.data.params
        leaves = {k[len("config."):]: v for k, v in run.items() if k.startswith("config.")}
        assert set(params) == set(leaves)
        assert float(params["optim.lr"]) == run["lr"] and params["precision.format"] == "e8m3"
        assert params["train.steps"] == "8" and params["init.parent"] == "null"


@pytest.mark.slow
def test_wandb_offline_holds_every_stored_series_and_the_config(live):
    from helpers import wandb_offline

    root, store, runs = live
    for run in runs.to_dict("records"):
        (path,) = wandb_files(root / "runs", run["run_id"])
        assert wandb_offline.history(path) == expected_series(store, run)
        assert wandb_offline.config(path) == run["config"]
        assert wandb_offline.run_info(path) == {"id": run["run_id"], "project": "precisionlab", "group": "logged",
                                                "name": run["run_id"]}


# ---- export: the same as live, and a second export replaces


@pytest.mark.slow
def test_export_equals_the_live_logs_and_replaces_on_a_second_export(live):
    from helpers import wandb_offline

    root, store, runs = live
    out = root / "exported"
    for _ in range(2):
        for to in ("tensorboard", "mlflow", "wandb"):
            export(root, to, str(out))
    live_uri, out_uri = (f"sqlite:///{folder / 'mlflow.db'}" for folder in (root / "runs", out))
    live_ml = {r.data.tags["precisionlab.run_id"]: r for r in mlflow_runs(live_uri, "logged")}
    out_ml = mlflow_runs(out_uri, "logged")
    assert len(out_ml) == 2  # exported twice: the first export's MLflow runs were replaced (deleted)
    for rid in runs.run_id:
        tb_live, tb_out = root / "runs" / "logged" / rid, out / "logged" / rid
        assert len(list(tb_out.glob("events.out.tfevents.*"))) == 1
        assert tensorboard_series(tb_out) == tensorboard_series(tb_live)
        (mlrun,) = [r for r in out_ml if r.data.tags["precisionlab.run_id"] == rid]
        assert mlflow_series(out_uri, mlrun) == mlflow_series(live_uri, live_ml[rid])
        assert mlrun.data.params == live_ml[rid].data.params
        (exported,) = wandb_files(out, rid)
        (logged,) = wandb_files(root / "runs", rid)
        assert wandb_offline.history(exported) == wandb_offline.history(logged)
        assert wandb_offline.config(exported) == wandb_offline.config(logged)


@pytest.mark.slow
def test_mlflow_writes_a_folder_store_when_asked_for_one(tmp_path, monkeypatch):
    """loggers.mlflow_uri=FOLDER: MLflow's folder store, which MLflow 3 writes only when told it may."""
    from mlflow.tracking import MlflowClient

    from precisionlab.store.trackers import TrackerRecorder, TrackerSettings, make_backend

    require("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")  # recorded, so what the backend sets is undone after the test
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    folder = tmp_path / "mlruns"
    recorder = TrackerRecorder(make_backend("mlflow", TrackerSettings(mlflow_uri=str(folder))), "r1", "s")
    recorder.start({"config": {"optim": {"lr": 0.5}}})
    recorder.log(1, "train", {"loss": 2.5})
    recorder.finish({"status": "completed", "steps_done": 1})
    assert recorder.failure is None
    (run,) = mlflow_runs(folder.as_uri(), "s")
    assert run.data.params == {"optim.lr": "0.5"} and run.data.tags["status"] == "completed"
    assert mlflow_series(folder.as_uri(), run) == {"train/loss": [(1, 2.5)], "outcome/steps_done": [(1, 1.0)]}
