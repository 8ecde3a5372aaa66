"""Experiment trackers: runs sent to TensorBoard, MLflow or Weights & Biases, live or from the store.

Live: `train.loggers=[tensorboard,mlflow,wandb]` (any of them) adds one `TrackerRecorder` per tracker
to the recorders of a run (`precisionlab train`, a sweep's job: precisionlab.run.job). From the store:
`precisionlab export --to TRACKER` replays each stored run through the same recorder (`replay`), so
both paths send the same things under the same names:

  - the run's resolved config (hyperparameters), at its start;
  - `SPLIT/NAME` series, one value per logged step: train/loss, train/lr, train/grad_norm, train/tokens,
    train/elapsed (every step), val/loss (every evaluation);
  - `diagnostics/NAME/SITE` (`diagnostics.every`) and `sharpness/METRIC/PARAMS` (`sharpness.every`) at
    their steps;
  - the outcome at the run's last step: its status (and error) as text or a tag, and `outcome/KEY` for
    its numbers (steps_done, final and minimum losses, diverged_step, spikes).

A NaN or missing value is not sent (the store keeps a NaN as NULL), so a live series and its export are
equal. Characters a tracker refuses in a name (anything but letters, digits, `_ - . / space`) become `_`.

Where things go (`loggers.*`, `TrackerSettings`), and what a repeated export does:

  - TensorBoard: event files in DIR/SWEEP/RUN_ID; a run that starts from step 0 replaces the folder's
    earlier event files (a resumed run adds to them).
  - MLflow: tracking URI loggers.mlflow_uri, else $MLFLOW_TRACKING_URI, else the SQLite file DIR/mlflow.db;
    experiment SWEEP, one run per run id, tagged `precisionlab.run_id`; a run that starts from
    step 0 replaces (deletes) the experiment's earlier MLflow run of that id, a resumed one adds to it.
  - W&B: project `loggers.wandb_project`, group SWEEP, W&B run id = the run id, files in DIR/wandb;
    offline unless $WANDB_MODE says otherwise; a run that starts from step 0 replaces the earlier
    offline folders of that id.

SWEEP is the sweep's name, "train" for `precisionlab train`.

Faults: a tracker that fails while a run trains (its package gone, its server down, any exception)
gives one warning naming the tracker and the reason, and sends nothing more for that run; training and
the store go on untouched. What is wrong before anything runs (an unknown tracker, a package not
installed, a malformed MLflow URI) is `tracker_problem`'s one line, which the config's checks refuse.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from precisionlab.store.schema import METRIC_KEYS, OUTCOME_KEYS

__all__ = ["TRACKERS", "TrackerSettings", "TrackerRecorder", "TrackerError", "tracker_problem", "tracker_recorders",
           "replay", "export_runs", "series_name"]

log = logging.getLogger(__name__)

TRACKERS = ("tensorboard", "mlflow", "wandb")
PACKAGE_OF = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}  # the import; the extra has the tracker's name
TRAIN_GROUP = "train"  # the experiment / group of `precisionlab train`'s runs
# The numbers of an outcome a tracker receives (wall_time and error are the store's, or text).
OUTCOME_NUMBERS = tuple(k for k in OUTCOME_KEYS if k not in ("error", "wall_time"))
MLFLOW_SCHEMES = ("", "file", "http", "https", "databricks", "sqlite", "postgresql", "mysql", "mssql")


class TrackerError(RuntimeError):
    """An export a tracker could not take (one line: the tracker and the reason)."""


@dataclass(frozen=True)
class TrackerSettings:
    """The `loggers` config group: where each tracker writes."""

    dir: str = "runs"
    mlflow_uri: str | None = None
    wandb_project: str = "precisionlab"

    @classmethod
    def from_cfg(cls, cfg: Any) -> "TrackerSettings":
        node = cfg.get("loggers") or {}
        return cls(**{k: node[k] for k in ("dir", "mlflow_uri", "wandb_project") if k in node})


def tracker_problem(names: list[str], mlflow_uri: str | None, key: str = "train.loggers",
                    uri_key: str = "loggers.mlflow_uri") -> str | None:
    """One line saying why the trackers `names` (the value of `key`) cannot be used here, or None: an
    unknown tracker, its package not installed (naming the extra), or a malformed MLflow tracking URI
    (the value of `uri_key`)."""
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        return f"{key} must be a list of {', '.join(TRACKERS)}, e.g. [tensorboard,mlflow]; got {list(names)}"
    if "mlflow" in names:
        uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
        where = uri_key if mlflow_uri else "$MLFLOW_TRACKING_URI" if uri else "the default MLflow store"
        problem = mlflow_uri_problem(uri or "sqlite:///DIR/mlflow.db", where)
        if problem:
            return problem
    for name in dict.fromkeys(names):
        if importlib.util.find_spec(PACKAGE_OF[name]) is None:
            return (f"{key} names {name}, but the {PACKAGE_OF[name]} package is not installed; "
                    f"pip install \"precisionlab[{name}]\"")
    return None


def mlflow_uri_problem(uri: str, where: str = "loggers.mlflow_uri") -> str | None:
    """Why MLflow cannot use the tracking `uri` here, or None."""
    parts = urlsplit(uri)
    scheme = parts.scheme if len(parts.scheme) > 1 else ""  # C:\\... is a path
    accepted = "a folder, file:///PATH, http(s)://HOST[:PORT], sqlite:///PATH or a database URL"
    if scheme not in MLFLOW_SCHEMES:
        return f"{where} must be {accepted}; got {uri!r}"
    if scheme in ("http", "https") and not parts.hostname:
        return f"{where} must name a host: {scheme}://HOST[:PORT]; got {uri!r}"
    database = scheme in ("sqlite", "postgresql", "mysql", "mssql")
    if database and not all(importlib.util.find_spec(p) for p in ("sqlalchemy", "alembic")):
        return (f"{where} ({uri}) is a database, which MLflow writes with sqlalchemy and alembic; "
                "pip install \"precisionlab[mlflow]\"")
    return None


def series_name(*parts: Any) -> str:
    """A series' name from its parts, joined by `/`, in characters every tracker takes."""
    return "/".join(re.sub(r"[^\w.\- ]", "_", str(p)) for p in parts)


def _params_label(params: Mapping[str, Any] | None) -> str:
    """A sharpness value's parameters in its series name: {"eps": 0.001, "precision": "run"} -> eps_0.001_precision_run."""
    def text(v):
        return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))

    return "_".join(f"{k}_{text(v)}" for k, v in sorted((params or {}).items())) or "default"


def _number(value: Any) -> float | None:
    """`value` as a float, or None for what is not sent: missing, NaN, not a number."""
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


class TrackerRecorder:
    """The `Recorder` sending one run to one tracker `backend` (precisionlab.store.tracker_backends).

    Every call to the backend is guarded: the first exception is logged as one warning (`failure` keeps
    it) and the tracker is off for the rest of the run. `replace`: start afresh even when the run
    resumes (an export)."""

    def __init__(self, backend: Any, run_id: str, group: str | None, *, replace: bool = False):
        self.backend, self.run_id, self.group = backend, run_id, group or TRAIN_GROUP
        self.replace = replace
        self.failure: str | None = None
        self.started, self.last_step = False, 0

    def _send(self, method: str, *args: Any) -> None:
        if self.failure is not None or not self.started:  # a run that failed before its start sends nothing
            return
        try:
            getattr(self.backend, method)(*args)
        except Exception as err:  # any fault of the tracker: the run goes on without it
            self.failure = f"{type(err).__name__}: {err}".splitlines()[0]
            log.warning("%s logger off for run %s: %s", self.backend.name, self.run_id, self.failure)
            try:
                self.backend.abandon()
            except Exception:
                pass

    def _scalars(self, step: int, values: Mapping[str, Any]) -> None:
        numbers = {k: v for k, v in ((k, _number(v)) for k, v in values.items()) if v is not None}
        self.last_step = max(self.last_step, step)
        if numbers:
            self._send("scalars", step, numbers)

    # ---- the Recorder protocol

    def start(self, meta: Mapping[str, Any]) -> None:
        resume = not self.replace and (meta.get("start_step") or 0) > 0
        self.started = True
        self._send("open", self.run_id, self.group, dict(meta.get("config") or {}), resume)

    def log(self, step: int, split: str, metrics: Mapping[str, Any]) -> None:
        self._scalars(step, {series_name(split, k): v for k, v in metrics.items()})

    def checkpoint(self, step: int, path: str) -> None:
        pass  # a file path: nothing a tracker plots

    def sharpness(self, step: int, metric: str, value: float, params: Mapping[str, Any]) -> None:
        self._scalars(step, {series_name("sharpness", metric, _params_label(params)): value})

    def diagnostics(self, step: int, rows: list[tuple[str, str, float]]) -> None:
        self._scalars(step, {series_name("diagnostics", name, site): value for site, name, value in rows})

    def finish(self, outcome: Mapping[str, Any]) -> None:
        step = int(_number(outcome.get("steps_done", outcome.get("steps"))) or self.last_step)
        numbers = {series_name("outcome", k): outcome.get(k) for k in OUTCOME_NUMBERS}
        self._scalars(step, numbers)
        error = outcome.get("error")
        self._send("close", step, str(outcome.get("status")), None if error is None else str(error))


def make_backend(name: str, settings: TrackerSettings) -> Any:
    from precisionlab.store import tracker_backends

    return tracker_backends.BACKENDS[name](settings)


def tracker_recorders(cfg: Any, run_id: str, sweep: str | None) -> list[TrackerRecorder]:
    """One TrackerRecorder per tracker of the validated `cfg`'s train.loggers (none by default)."""
    names = list(dict.fromkeys(cfg.train.get("loggers") or []))
    settings = TrackerSettings.from_cfg(cfg)
    return [TrackerRecorder(make_backend(name, settings), run_id, sweep) for name in names]


def replay(store: Any, run: Mapping[str, Any], recorder: Any) -> None:
    """Send the stored run `run` (a row of `ResultsStore.runs()`) through `recorder`, as training did:
    its config, then step by step its diagnostics, train and val metrics and sharpness, then its outcome."""
    rid = run["run_id"]
    calls: dict[int, list[tuple]] = defaultdict(list)
    diagnostics = store.diagnostics(rid)
    for step, rows in diagnostics.groupby("step", sort=True):
        calls[int(step)].append(("diagnostics", [(r.site, r.name, r.value) for r in rows.itertuples()]))
    metrics = store.metrics(rid)
    for split in ("train", "val"):
        for row in metrics[metrics.split == split].itertuples():
            values = {k: getattr(row, k) for k in METRIC_KEYS}
            values.update(json.loads(row.extra) if isinstance(row.extra, str) else {})
            calls[int(row.step)].append(("log", split, values))
    for row in store.sharpness(rid).itertuples():
        calls[int(row.step)].append(("sharpness", row.metric, row.value, row.params))
    recorder.start({"config": run["config"], "start_step": 0})
    for step in sorted(calls):
        for method, *args in calls[step]:
            getattr(recorder, method)(step, *args)
    recorder.finish({"status": run["status"], **{k: run.get(k) for k in OUTCOME_KEYS}})


def export_runs(store: Any, runs: Any, tracker: str, settings: TrackerSettings, group: str | None) -> int:
    """Replay every run of the DataFrame `runs` (rows of `store.runs()`) to `tracker`; how many were sent.
    TrackerError at the first run the tracker fails on (what was sent before it stays)."""
    for _, run in runs.iterrows():
        recorder = TrackerRecorder(make_backend(tracker, settings), run["run_id"], group, replace=True)
        replay(store, run, recorder)
        if recorder.failure is not None:
            raise TrackerError(f"{tracker}: run {run['run_id']}: {recorder.failure}")
    return len(runs)
