"""How a run ends and what it counts on the way: `RunResult`, the divergence rules and loss spikes.

Outcomes:
  diverged  the loss blew up and did not come back: a train loss is NaN/Inf (at any step, warmup
            included), or the run's end level, the median of its last END_WINDOW (20) train losses,
            lies above the reference level ln V (V = `model.vocab_size`): the loss of predicting every
            token uniformly, deterministic, about where a freshly initialised model starts (5.545 for
            256 bytes; the tiny model starts near 5.34). A run that ends above it is no better than its
            start. An early-stop rule (below) may call it before the end: a prediction.
            `diverged_step` is the step the run stopped at, or, for a run judged at its end, the first
            step of the final stretch whose rolling median stayed above the level.
  failed    any other exception during training; `error` holds its text.
  completed otherwise. A completed run may still have learned little: the report calls it "did not
            converge" (a stalled run, e.g. at a tiny learning rate; precisionlab.analysis.report).
            Stalling is never a divergence: its loss stays near its start, below the level.

Early stopping would save compute: a rule, fed the train losses one step at a time, predicts that the
run would end diverged and stops it there (`train.divergence.rule`):
  none      (default) never stops early except on NaN/Inf; the outcome is judged at the end of the run
            by the definition above: the ground truth the other rules predict.
  median    stops once the median of the last `window` train losses is above ln V + `margin`: most of
            those steps lie above the level, a sustained blow-up, not one bad batch. A run it lets
            finish is judged at the end like `none`.
  factor    precisionlab 0.1's rule: after warmup (step > optim.warmup_steps) a single batch's train
            loss above `train.divergence.factor` x step 1's train loss. A stalled run crosses it by
            batch noise, and runs that recover are stopped on their first excursion; kept to reproduce
            old results. No end-of-run judgement (a run it lets finish completes).
Why `none` is the default: on 21 tiny-model runs trained to the end (mask E8M7/E8M3 x LR 0.1, 0.3, 1
x seeds 10-12, and E8M7 at LR 1e-6; scripts/validate_divergence.py) none ended diverged, although every
LR-1 run spent ~200 steps at 30-90 nats before the cosine schedule brought it back to ~3.2. `median`
called those 6 (and one LR-0.3 run at window 20) diverged: 66.7-71.4% agreement at windows 20-100 and
margins 0-5 nats; `factor` 42.9%, with 2 of the 3 stalled runs called diverged. At this scale no early
stop predicted the end; `median` is for runs too costly to finish, with that caveat.
`replay(rule, losses)` runs a rule over a stored curve and returns the step it stops at, the step the
training loop stops at with the same rule.

Loss spikes: step t is a spike step when its train loss is more than `train.spikes.z`
robust standard deviations above the median of the previous `train.spikes.window` train
losses (checked once that many exist). The standard deviation is estimated from the window's
successive differences, 1.4826 MAD(differences) / sqrt(2): unlike the MAD of the losses
themselves it does not grow with the curve's own trend early in training. It is floored at
MAD_FLOOR x the median, so that a flat window does not make every wiggle a spike. A run of
consecutive spike steps counts as one spike. A spike is a recovered excursion: one that starts at or
after a diverged run's `diverged_step` (the blow-up itself) is not counted, nor is the step a run
stops at.

Calibration (z = 8): on the 141 completed runs of `sweep=fp8_recipes` (39,480 steps of real
training curves, window 20) the robust z exceeded 2.9 at 1% of steps, 4.9 at 0.1% and 6.8 at
0.01%; the largest was 7.6. A threshold of 8 fires on none of them, and catches a 15% jump on a
curve with 1% batch noise (tests/train/test_loop.py). precisionlab 0.2's rule (loss > 1.5 x the
median) never fired on the paper grid: a jump of half the loss is a divergence, not a spike.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["RunResult", "SpikeCounter", "robust_z", "MAD_FLOOR", "Rule", "MedianRule", "NoRule",
           "FactorRule", "make_rule", "replay", "reference_loss", "END_WINDOW"]

MAD_FLOOR = 1e-3  # the MAD's floor, relative to the window's median loss
END_WINDOW = 20  # a run's end level: the median of its last 20 train losses


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


def reference_loss(vocab_size: int) -> float:
    """ln V: the cross-entropy of predicting every one of V tokens with probability 1/V."""
    return math.log(vocab_size)


class Rule:
    """An early-stop rule: `update(loss)` with each step's train loss in order returns True at the step
    the run should stop as diverged; `end()` after the last step returns the diverged step by the
    end-of-run definition (the median of the last END_WINDOW losses above ln V), or None. Every rule
    tracks the same state (the step, the first loss, the last losses, the start of the stretch whose
    rolling median is above ln V), so `state()`/`load()` carry it across a resume or into a branch
    whatever rule the parent used. Subclasses add when to stop early."""

    def __init__(self, level: float, window: int = 1):
        self.level, self.step, self.first = level, 0, None
        self.recent = deque(maxlen=max(window, END_WINDOW))
        self.above_since: int | None = None  # first step of the current stretch whose END_WINDOW median is above the level

    def update(self, loss: float) -> bool:
        self.step += 1
        self.recent.append(loss)
        if self.first is None:
            self.first = loss
        if _median_last(self.recent, END_WINDOW) <= self.level:  # NaN compares False: counts as above
            self.above_since = None
        elif self.above_since is None:
            self.above_since = self.step
        return not math.isfinite(loss)

    def end(self) -> int | None:
        """The end-of-run judgement: the first step of the final stretch above the level, or None."""
        return self.above_since

    def state(self) -> dict:
        return {"recent": list(self.recent), "step": self.step, "first": self.first, "above_since": self.above_since}

    def load(self, state: dict) -> None:
        self.recent.extend(state["recent"])
        self.step, self.first, self.above_since = state["step"], state["first"], state["above_since"]


def _median_last(values: deque, n: int) -> float:
    return statistics.median(list(values)[-n:])


class NoRule(Rule):
    """`none`: stop only on NaN/Inf; the outcome is judged at the end."""


class MedianRule(Rule):
    """`median`: stop when the median of the last `window` losses is above the level + `margin` (once
    `window` losses exist)."""

    def __init__(self, level: float, window: int, margin: float = 0.0):
        super().__init__(level, window)
        self.window, self.margin = window, margin

    def update(self, loss: float) -> bool:
        return super().update(loss) or (
            self.step >= self.window and _median_last(self.recent, self.window) > self.level + self.margin)


class FactorRule(Rule):
    """`factor`, precisionlab 0.1's rule: after warmup, one loss above factor x the first loss; no end judgement."""

    def __init__(self, level: float, factor: float, warmup_steps: int):
        super().__init__(level)
        self.factor, self.warmup_steps = factor, warmup_steps

    def update(self, loss: float) -> bool:
        return super().update(loss) or (self.step > self.warmup_steps and loss > self.factor * self.first)

    def end(self) -> int | None:
        return None


def make_rule(cfg) -> Rule:
    """The rule `cfg.train.divergence.rule` names, with its settings from `cfg`."""
    d, level = cfg.train.divergence, reference_loss(cfg.model.vocab_size)
    if d.rule == "factor":
        return FactorRule(level, d.factor, cfg.optim.warmup_steps)
    if d.rule == "median":
        return MedianRule(level, d.window, d.margin)
    return NoRule(level)


def replay(rule: Rule, losses: Iterable[float]) -> tuple[str, int | None]:
    """Run `rule` over a curve's train losses (steps 1, 2, ...): ("diverged", step) where it stops, or
    where its end-of-run judgement puts the divergence, else ("completed", None); as the loop decides."""
    for loss in losses:
        if rule.update(loss):
            return "diverged", rule.step
    onset = rule.end()
    return ("completed", None) if onset is None else ("diverged", onset)


def robust_z(loss: float, recent) -> float:
    """How many robust standard deviations `loss` lies above the median of `recent` (see above)."""
    recent = list(recent)
    median = statistics.median(recent)
    steps = [b - a for a, b in zip(recent, recent[1:])]
    centre = statistics.median(steps)
    sigma = 1.4826 * statistics.median(abs(d - centre) for d in steps) / math.sqrt(2)
    return (loss - median) / max(sigma, MAD_FLOOR * abs(median), 1e-12)


class SpikeCounter:
    """Counts loss spikes as defined in the module docstring; `starts` holds each spike's first step."""

    def __init__(self, z: float, window: int):
        self.z, self.recent = z, deque(maxlen=window)
        self.starts: list[int] = []
        self.in_spike, self.step = False, 0

    @property
    def count(self) -> int:
        return len(self.starts)

    def update(self, loss: float) -> bool:
        """Feed one train loss; True if this step is a spike step (NaN/Inf are divergences, not spikes)."""
        self.step += 1
        full = len(self.recent) == self.recent.maxlen
        spike = full and math.isfinite(loss) and robust_z(loss, self.recent) > self.z
        if spike and not self.in_spike:
            self.starts.append(self.step)
        self.in_spike = spike
        self.recent.append(loss)
        return spike

    def before(self, step: int) -> int:
        """How many spikes started before `step` (a diverged run's spikes: excursions it recovered from)."""
        return sum(start < step for start in self.starts)

    def state(self) -> dict:
        return {"recent": list(self.recent), "count": self.count, "in_spike": self.in_spike,
                "starts": list(self.starts), "step": self.step}

    def load(self, state: dict) -> None:
        self.recent.extend(state["recent"])
        self.in_spike = state["in_spike"]
        # checkpoints of older versions hold only the count: their spikes' steps are unknown (taken as 0)
        self.starts = list(state.get("starts", [0] * state["count"]))
        self.step = state.get("step", 0)
