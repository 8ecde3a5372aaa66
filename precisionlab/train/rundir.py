"""`RunDirRecorder`: the `Recorder` that writes a run's curve and metadata to a folder.

  metrics.csv  one row per train step and per eval (columns: step, split, then metrics)
  run.json     metadata from `start` (status "running"), then the outcome from `finish`
  sharpness.csv  one row per sharpness value (`sharpness.every`): step, metric, value, params (JSON)
  diagnostics.csv  one row per diagnostic value (`diagnostics.every`): step, site, name, value

Every write replaces the whole file atomically (temp name + os.replace), so a
killed run leaves the last complete version, never a torn one. Rows (metrics and
diagnostics) are buffered and flushed at every eval, checkpoint and at the end. A run resumed
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
        self.diagnostic_rows: list[dict[str, Any]] = []

    def start(self, meta: dict[str, Any]) -> None:
        self.meta = {**meta, "status": "running"}
        self.rows, self.sharpness_rows, self.diagnostic_rows = (
            self._kept(name, meta.get("start_step")) for name in ("metrics.csv", "sharpness.csv", "diagnostics.csv"))
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

    def diagnostics(self, step: int, rows: list[tuple[str, str, float]]) -> None:
        self.diagnostic_rows += [{"step": step, "site": site, "name": name, "value": value} for site, name, value in rows]

    def finish(self, outcome: dict[str, Any]) -> None:
        self.meta.update(outcome)
        self._write_csv()
        self._write_json()

    def _kept(self, name: str, start_step: int | None) -> list[dict[str, Any]]:
        """The rows of an earlier attempt's CSV up to the step this one resumes from."""
        previous = self.directory / name
        if not start_step or not previous.is_file():
            return []
        with open(previous, newline="") as f:
            return [row for row in csv.DictReader(f) if int(row["step"]) <= start_step]

    def _write_csv(self) -> None:
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_atomic(self.directory / "metrics.csv", out.getvalue())
        if self.diagnostic_rows:
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=["step", "site", "name", "value"], lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.diagnostic_rows)
            write_atomic(self.directory / "diagnostics.csv", out.getvalue())

    def _write_json(self) -> None:
        record = {**self.meta, "checkpoints": self.checkpoints}
        write_atomic(self.directory / "run.json", json.dumps(record, indent=2, default=str) + "\n")
