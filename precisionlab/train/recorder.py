"""What a training run reports, and to whom: the `Recorder` protocol.

`precisionlab.train.loop.run(cfg, recorder=...)` calls these hooks; the run
directory writer (CSV/JSON next to Hydra's outputs) and the results store
(`precisionlab.store`) both implement them, so training never imports either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class Recorder(Protocol):
    def start(self, meta: dict[str, Any]) -> None:
        """Once, before step 1: resolved config, data fingerprint, versions, device."""

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        """One row of metrics; split is "train" (every step) or "val" (every eval)."""

    def checkpoint(self, step: int, path: str) -> None:
        """A checkpoint file was written (atomically) for this step."""

    def sharpness(self, step: int, metric: str, value: float, params: dict[str, Any]) -> None:
        """Optional (training checks for it): a sharpness value measured at this step
        (`sharpness.every`); params are its parameters, as `precisionlab sharpness` stores them."""

    def diagnostics(self, step: int, rows: list[tuple[str, str, float]]) -> None:
        """Optional (training checks for it): numerical diagnostics of this step (`diagnostics.every`),
        rows of (site, name, value); see precisionlab.train.diagnostics."""

    def finish(self, outcome: dict[str, Any]) -> None:
        """Once, at the end: status (completed/diverged/failed), steps, losses, error text."""


class Tee:
    """A `Recorder` handing every call to several recorders (the store, the run directory, ...);
    `extra_meta` is added to what `start` receives."""

    def __init__(self, *recorders: Any, extra_meta: Mapping[str, Any] | None = None):
        self.recorders = [r for r in recorders if r is not None]
        self.extra_meta = dict(extra_meta or {})

    def start(self, meta):
        for r in self.recorders:
            r.start({**meta, **self.extra_meta})

    def log(self, step, split, metrics):
        for r in self.recorders:
            r.log(step, split, metrics)

    def checkpoint(self, step, path):
        for r in self.recorders:
            r.checkpoint(step, path)

    def sharpness(self, step, metric, value, params):
        for r in self.recorders:
            hook = getattr(r, "sharpness", None)  # optional in the Recorder protocol
            if hook is not None:
                hook(step, metric, value, params)

    def diagnostics(self, step, rows):
        for r in self.recorders:
            hook = getattr(r, "diagnostics", None)  # optional in the Recorder protocol
            if hook is not None:
                hook(step, rows)

    def finish(self, outcome):
        for r in self.recorders:
            r.finish(outcome)
