"""What a training run reports, and to whom: the `Recorder` protocol.

`precisionlab.train.run(cfg, recorder=...)` calls these hooks; the run
directory writer (CSV/JSON next to Hydra's outputs) and the results store
(`precisionlab.store`) both implement them, so training never imports either.
"""

from __future__ import annotations

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

    def finish(self, outcome: dict[str, Any]) -> None:
        """Once, at the end: status (completed/diverged/failed), steps, losses, error text."""
