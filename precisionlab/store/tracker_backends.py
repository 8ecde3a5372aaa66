"""The three trackers behind `precisionlab.store.trackers.TrackerRecorder`: TensorBoard, MLflow, W&B.

Each backend takes `open(run_id, group, config, resume)`, `scalars(step, {name: value})`,
`close(step, status, error)` and `abandon()` (after a fault: let go of whatever is open, quietly). The
tracker's package is imported inside `open`, so importing precisionlab never imports it. Where each
writes and what replaces what: precisionlab.store.trackers.
"""

from __future__ import annotations

import glob
import os
import shutil
import time
from typing import Any

__all__ = ["BACKENDS", "TensorBoard", "MLflow", "WandB", "flat_params", "mlflow_uri"]

RUN_ID_TAG = "precisionlab.run_id"  # an MLflow run's tag naming the precisionlab run it holds


def flat_params(config: Any, prefix: str = "") -> dict[str, str]:
    """A nested config as dotted keys and text values (MLflow's params)."""
    out: dict[str, str] = {}
    for key, value in (config or {}).items():
        if isinstance(value, dict):
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = "null" if value is None else str(value)
    return out


class TensorBoard:
    """Event files in DIR/GROUP/RUN_ID, through torch's SummaryWriter; the config and the outcome as text."""

    name = "tensorboard"

    def __init__(self, settings: Any):
        self.root, self.writer = settings.dir, None

    def open(self, run_id: str, group: str, config: dict, resume: bool) -> None:
        import json

        from torch.utils.tensorboard import SummaryWriter

        folder = os.path.join(self.root, group, run_id)
        if not resume:  # a run from step 0: its earlier event files would show as a second curve
            for old in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
                os.remove(old)
        self.writer = SummaryWriter(folder, flush_secs=30)
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=1, sort_keys=True) + "\n```", 0)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def close(self, step: int, status: str, error: str | None) -> None:
        self.writer.add_text("status", status if error is None else f"{status}: {error}", step)
        self.writer.close()

    def abandon(self) -> None:
        if self.writer is not None:
            self.writer.close()


def mlflow_uri(settings: Any) -> str:
    """The tracking URI: loggers.mlflow_uri, else $MLFLOW_TRACKING_URI, else the SQLite file DIR/mlflow.db
    (MLflow 3 refuses its old folder store unless told to)."""
    return (settings.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
            or "sqlite:///" + os.path.abspath(os.path.join(settings.dir, "mlflow.db")))


def _quick_http() -> None:
    """An MLflow server that is down answers within seconds, not after minutes of retries
    (the user's own MLFLOW_HTTP_REQUEST_* settings win)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


class MLflow:
    """One MLflow run per run id in the experiment GROUP, tagged RUN_ID_TAG; metrics sent in batches
    (every `batch` values or `seconds`, and at the end)."""

    name = "mlflow"
    batch, seconds = 1000, 30.0

    def __init__(self, settings: Any):
        self.uri = mlflow_uri(settings)
        self.client, self.mlflow_run, self.pending = None, None, []
        self.last_sent = time.monotonic()

    def open(self, run_id: str, group: str, config: dict, resume: bool) -> None:
        _quick_http()
        if self.uri.startswith("sqlite:///"):  # SQLite makes the file, not its folder
            os.makedirs(os.path.dirname(self.uri[len("sqlite:///"):]) or ".", exist_ok=True)
        if "://" not in self.uri or self.uri.startswith("file:"):  # a folder, asked for by name: MLflow 3
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # refuses its folder store unless told
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = client = MlflowClient(tracking_uri=self.uri)
        experiment = client.get_experiment_by_name(group)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(group)
        earlier = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{run_id}'")
        if resume and earlier:
            self.mlflow_run = earlier[0].info.run_id
            return
        for old in earlier:  # one MLflow run per run id: a fresh start replaces the earlier one
            client.delete_run(old.info.run_id)
        self.mlflow_run = client.create_run(experiment_id, run_name=run_id,
                                            tags={RUN_ID_TAG: run_id, "precisionlab.group": group}).info.run_id
        params = [Param(k, v[:6000]) for k, v in flat_params(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a call
            client.log_batch(self.mlflow_run, params=params[i:i + 100])

    def scalars(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(name, value, now, step) for name, value in values.items()]
        if len(self.pending) >= self.batch or time.monotonic() - self.last_sent >= self.seconds:
            self._send()

    def _send(self) -> None:
        pending, self.pending = self.pending, []
        for i in range(0, len(pending), self.batch):
            self.client.log_batch(self.mlflow_run, metrics=pending[i:i + self.batch])
        self.last_sent = time.monotonic()

    def close(self, step: int, status: str, error: str | None) -> None:
        self._send()
        self.client.set_tag(self.mlflow_run, "status", status)
        if error is not None:
            self.client.set_tag(self.mlflow_run, "error", error[:5000])
        self.client.set_terminated(self.mlflow_run, "FAILED" if status == "failed" else "FINISHED")

    def abandon(self) -> None:
        self.pending = []


class WandB:
    """A W&B run with id = the run id, group GROUP, in DIR/wandb; offline unless $WANDB_MODE is set."""

    name = "wandb"

    def __init__(self, settings: Any):
        self.dir, self.project, self.run = settings.dir, settings.wandb_project, None

    def open(self, run_id: str, group: str, config: dict, resume: bool) -> None:
        import wandb

        mode = os.environ.get("WANDB_MODE") or "offline"
        if not resume:  # a fresh start replaces the earlier offline copies of this run
            for old in glob.glob(os.path.join(self.dir, "wandb", f"offline-run-*-{run_id}")):
                shutil.rmtree(old, ignore_errors=True)
        os.makedirs(self.dir, exist_ok=True)
        quiet = {"console": "off", "silent": True, "x_disable_stats": True, "x_disable_machine_info": True}
        known = getattr(wandb.Settings, "model_fields", quiet)  # the names vary across wandb versions
        self.run = wandb.init(project=self.project, group=group, name=run_id, id=run_id, dir=self.dir,
                              config=config, mode=mode, resume="allow", reinit="create_new",
                              settings=wandb.Settings(**{k: v for k, v in quiet.items() if k in known}))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self, step: int, status: str, error: str | None) -> None:
        self.run.summary["status"] = status
        if error is not None:
            self.run.summary["error"] = error
        self.run.finish(exit_code=1 if status == "failed" else 0)

    def abandon(self) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1, quiet=True)


BACKENDS = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB}
