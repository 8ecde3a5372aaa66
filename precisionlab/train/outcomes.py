"""How a run ends and what it counts on the way: `RunResult` and loss spikes.

Outcomes:
  diverged  the train loss is NaN/Inf, or after warmup (step > optim.warmup_steps)
            exceeds `train.divergence.factor` x the initial loss (the train loss
            of step 1). The run stops at once; `diverged_step` is that step.
  failed    any other exception during training; `error` holds its text.
  completed otherwise.

Loss spikes: step t is a spike step when its train loss exceeds
`train.spikes.factor` x the median of the previous `train.spikes.window` train
losses (checked once that many exist); a run of consecutive spike steps
counts as one spike.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

__all__ = ["RunResult", "SpikeCounter"]


@dataclass
class RunResult:
    status: str  # "completed" | "diverged" | "failed"
    steps_done: int = 0
    final_train_loss: float | None = None
    final_val_loss: float | None = None
    min_val_loss: float | None = None
    initial_loss: float | None = None
    diverged_step: int | None = None
    spikes: int = 0
    error: str | None = None
    checkpoints: list[tuple[int, str]] = field(default_factory=list)


class SpikeCounter:
    """Counts loss spikes as defined in the module docstring."""

    def __init__(self, factor: float, window: int):
        self.factor, self.recent = factor, deque(maxlen=window)
        self.count, self.in_spike = 0, False

    def update(self, loss: float) -> bool:
        """Feed one train loss; True if this step is a spike step."""
        full = len(self.recent) == self.recent.maxlen
        spike = full and loss > self.factor * statistics.median(self.recent)
        if spike and not self.in_spike:
            self.count += 1
        self.in_spike = spike
        self.recent.append(loss)
        return spike

    def state(self) -> dict:
        return {"recent": list(self.recent), "count": self.count, "in_spike": self.in_spike}

    def load(self, state: dict) -> None:
        self.recent.extend(state["recent"])
        self.count, self.in_spike = state["count"], state["in_spike"]
