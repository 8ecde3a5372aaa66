"""`RunDirRecorder`: the `Recorder` that writes a run's curve and metadata to a folder.

  metrics.csv  one row per train step and per eval (columns: step, split, then metrics)
  run.json     metadata from `start` (status "running"), then the outcome from `finish`
  sharpness.csv  one row per sharpness value (`sharpness.every`): step, metric, value, params (JSON)

Every write replaces the whole file atomically (temp name + os.replace), so a
killed run leaves the last complete version, never a torn one. Rows are
buffered and flushed at every eval, checkpoint and at the end. A run resumed
in the same folder (meta "start_step" > 0) keeps the rows up to that step.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["RunDirRecorder", "write_atomic"]


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as tmp:
        tmp.write(text)
    os.replace(tmp.name, path)


class RunDirRecorder:
    def __init__(self, directory: str | os.PathLike = "."):
        self.directory = Path(directory)
        self.meta: dict[str, Any] = {}
        self.rows: list[dict[str, Any]] = []
        self.checkpoints: list[dict[str, Any]] = []
        self.sharpness_rows: list[dict[str, Any]] = []

    def start(self, meta: dict[str, Any]) -> None:
        self.meta = {**meta, "status": "running"}
        previous = self.directory / "metrics.csv"
        if meta.get("start_step") and previous.is_file():
            with open(previous, newline="") as f:
                self.rows = [row for row in csv.DictReader(f) if int(row["step"]) <= meta["start_step"]]
        previous = self.directory / "sharpness.csv"
        if meta.get("start_step") and previous.is_file():
            with open(previous, newline="") as f:
                self.sharpness_rows = [row for row in csv.DictReader(f) if int(row["step"]) <= meta["start_step"]]
        self._write_json()

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        self.rows.append({"step": step, "split": split, **metrics})
        if split != "train":
            self._write_csv()

    def checkpoint(self, step: int, path: str) -> None:
        self.checkpoints.append({"step": step, "path": path})
        self._write_csv()
        self._write_json()

    def sharpness(self, step: int, metric: str, value: float, params: dict[str, Any]) -> None:
        self.sharpness_rows.append({"step": step, "metric": metric, "value": value,
                                    "params": json.dumps(params, sort_keys=True)})
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["step", "metric", "value", "params"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.sharpness_rows)
        write_atomic(self.directory / "sharpness.csv", out.getvalue())

    def finish(self, outcome: dict[str, Any]) -> None:
        self.meta.update(outcome)
        self._write_csv()
        self._write_json()

    def _write_csv(self) -> None:
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_atomic(self.directory / "metrics.csv", out.getvalue())

    def _write_json(self) -> None:
        record = {**self.meta, "checkpoints": self.checkpoints}
        write_atomic(self.directory / "run.json", json.dumps(record, indent=2, default=str) + "\n")
