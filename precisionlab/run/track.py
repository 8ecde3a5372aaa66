"""`precisionlab.track`: record a training loop the user wrote into the results store.

    with precisionlab.track(config, store="results/mine.db", sweep="my-loop") as run:
        if not run.done:
            for step in range(1, steps + 1):
                ...
                if run.log(step, loss=loss, val_loss=val_loss):   # True: the loss went NaN/Inf
                    break
                run.checkpoint(step, {"model": model.state_dict()})

The config. A dict (JSON values) describing the run; its hash is the run's id
(precisionlab.store.identity), as for `precisionlab train`, so the same config is the same run.
Required, each checked with a one-line ValueError:
  precision        a preset name ("nvfp4"; `precisionlab.presets()`), or a dict of precision keys,
                   on top of a preset when it has `preset` (`{"preset": "nvfp4", "exclude": [...]}`):
                   stored as the full precision node, so the report labels runs by preset and formats
  optim.lr         the learning rate (> 0): the report's columns
  seed             an integer >= 0: the report's replicates
  model.vocab_size V (>= 2): ln V is the diverged level and the report's reference loss
  train.steps      the steps the loop means to train (> 0)
Anything else (model shape, batch size, schedule, ...) is the user's, recorded as given: a key
whose value differs between runs of a sweep becomes part of their report label.

Outcome, by precisionlab.train.outcomes' rules (the `none` rule: stop only on NaN/Inf, judge at the
end): `log` returns True once a train loss is NaN or Inf (the loop should stop); leaving the block
records `diverged` then, or when the median of the last 20 train losses is above ln V, else
`completed`. An exception in the block records `failed` with its text, everything logged so far
kept, and propagates. A block that logged no train loss is `failed`.

Reruns follow the store: a config whose run is already completed or diverged is not trained again:
`run.done` is True (with `run.status`), and `log`/`checkpoint` refuse; `force=True` retrains it. A
failed or interrupted run restarts from the beginning (its old rows cleared). A run being trained
by another live process is a StoreError.

Checkpoints: `run.checkpoint(step, state)` writes `state` (a dict of tensors and plain values, e.g.
the model's and optimizer's state dicts) atomically to CHECKPOINT_DIR/RUN_ID/step_NNNNNNN.pt in the
format precisionlab.train.checkpoint reads and verifies (run id, step, checksum; `state` under
"state", the config under "config"), and records it in the store's checkpoints table.
`precisionlab sharpness` measures only precisionlab's own models: it refuses a tracked run's
checkpoints (precisionlab.sweep.sharpness).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from precisionlab.config import Spikes
from precisionlab.run.convert import precision_node, presets
from precisionlab.run.job import busy_error
from precisionlab.store import DONE, ResultsStore, run_id
from precisionlab.store.identity import canonical
from precisionlab.train.checkpoint import CHECKPOINT_FORMAT, checkpoint_path, save_checkpoint
from precisionlab.train.outcomes import NoRule, SpikeCounter, reference_loss

__all__ = ["track", "TrackedRun", "TRACKER", "REQUIRED"]

TRACKER = "precisionlab.track"  # run meta "tracker": the run was recorded by a user's loop
REQUIRED = ("precision", "optim.lr", "seed", "model.vocab_size", "train.steps")


def _get(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def checked_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` as it is stored: checked (one-line ValueError naming the key and what it takes), its
    `precision` replaced by the full precision node it means."""
    if not isinstance(config, Mapping):
        raise ValueError(f"track's config must be a dict; got {type(config).__name__}")
    missing = [key for key in REQUIRED if _get(config, key) is None]
    if missing:
        raise ValueError(f"track's config lacks {', '.join(missing)}; it needs {', '.join(REQUIRED)} "
                         "(see precisionlab.run.track)")
    lr, seed, vocab, steps = (_get(config, k) for k in ("optim.lr", "seed", "model.vocab_size", "train.steps"))
    if not (_number(lr) and lr > 0):
        raise ValueError(f"optim.lr must be a number > 0; got {lr!r}")
    for key, value, low in (("seed", seed, 0), ("model.vocab_size", vocab, 2), ("train.steps", steps, 1)):
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
            raise ValueError(f"{key} must be an integer >= {low}; got {value!r}")
    precision = config["precision"]
    if not isinstance(precision, (str, Mapping)):
        raise ValueError(f"precision must be a preset name ({', '.join(presets())}) or a dict of precision keys; "
                         f"got {type(precision).__name__}")
    # plain JSON values (a dtype or a path becomes its text): what the store and a checkpoint hold
    return canonical({**config, "precision": precision_node(precision)}, semantic=False)


class TrackedRun:
    """One run of a user's loop in a results store (module docstring); made by `track`."""

    def __init__(self, config: Mapping[str, Any], store: ResultsStore, *, sweep: str | None, force: bool,
                 checkpoint_dir: str | os.PathLike, meta: Mapping[str, Any] | None):
        self.config, self.store, self.sweep = dict(config), store, sweep
        self.id = run_id(self.config)
        self.checkpoint_dir = Path(checkpoint_dir).absolute()
        self._meta = dict(meta or {})
        self._recorder = None
        self.status = store.status(self.id)
        self.done = self.status in DONE and not force
        self.diverged_step: int | None = None  # the first step whose train loss was NaN/Inf
        level = reference_loss(int(self.config["model"]["vocab_size"]))
        self._rule, self._steps = NoRule(level), []  # the rule counts train losses; _steps maps them to steps
        spikes = Spikes()  # the schema's defaults, as `precisionlab train` counts them
        self._spikes = SpikeCounter(spikes.z, spikes.window)
        self._started = time.monotonic()

    def _open(self) -> None:
        if self.done:
            return
        if not self.store.claim_run(self.id, self.config, self.sweep, force=True):  # clears a failed try's rows
            raise busy_error(self.store, self.id)
        self.status = "running"
        self._recorder = self.store.recorder(self.id)
        try:  # refused at its start (another corpus than its sweep's): recorded failed, its claim released
            self._recorder.start({"run_id": self.id, "tracker": TRACKER, "pid": os.getpid(), **self._meta})
        except BaseException as err:
            self._recorder.__exit__(type(err), err, err.__traceback__)
            self.status = "failed"
            raise

    def _writable(self, what: str) -> None:
        if self.done:
            raise RuntimeError(f"run {self.id} is already {self.status} in {self.store.location}; check run.done "
                               f"before training, or pass force=True to track() to retrain it ({what} refused)")
        if self._recorder is None or self._recorder.finished:
            raise RuntimeError(f"run {self.id} is not open: call {what} inside its `with precisionlab.track(...)` block")

    def log(self, step: int, loss: float | None = None, val_loss: float | None = None, **metrics: float) -> bool:
        """Record step `step`'s train loss (and `lr`, `grad_norm`, `tokens` or any other number as
        extra) and, when given, its validation loss. Returns True once a train loss was NaN/Inf."""
        self._writable("log")
        step = int(step)
        for name, value in metrics.items():
            try:
                metrics[name] = float(value)  # a 0-d tensor or numpy number too
            except (TypeError, ValueError):
                raise ValueError(f"run.log: metric {name}={value!r} is not a number") from None
        elapsed = metrics.pop("elapsed", time.monotonic() - self._started)
        if loss is not None:
            loss = float(loss)
            self._recorder.log(step, "train", {"loss": loss, "elapsed": elapsed, **metrics})
            self._steps.append(step)
            self._spikes.update(loss)
            if self._rule.update(loss) and self.diverged_step is None:
                self.diverged_step = step
        if val_loss is not None:
            self._recorder.log(step, "val", {"loss": float(val_loss), "elapsed": elapsed})
        return self.diverged_step is not None

    def checkpoint(self, step: int, state: Mapping[str, Any]) -> Path:
        """Save `state` as this run's checkpoint at `step` (module docstring) and record it; returns the file."""
        self._writable("checkpoint")
        if not isinstance(state, Mapping):
            raise ValueError(f"checkpoint state must be a dict (e.g. {{'model': model.state_dict()}}); "
                             f"got {type(state).__name__}")
        path = checkpoint_path(self.checkpoint_dir, self.id, int(step))
        save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "run_id": self.id, "step": int(step),
                               "config": self.config, "state": dict(state)})
        self._recorder.checkpoint(int(step), str(path))
        return path

    def _outcome(self) -> dict[str, Any]:
        if not self._steps:
            return {"status": "failed", "error": "the tracked block logged no train loss"}
        onset = self.diverged_step
        if onset is None and self._rule.end() is not None:
            onset = self._steps[self._rule.end() - 1]  # the rule's count of losses -> the logged step
        if onset is None:
            return {"status": "completed", "spikes": self._spikes.count}
        before = sum(1 for s in self._steps if s < onset)  # spikes before the blow-up: recovered excursions
        return {"status": "diverged", "diverged_step": onset, "spikes": self._spikes.before(before + 1)}

    def __enter__(self) -> "TrackedRun":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if self._recorder is not None and not self._recorder.finished:
                if exc_type is None:
                    outcome = self._outcome()
                    self._recorder.finish(outcome)
                    self.status = outcome["status"]
                else:  # records `failed` with the exception's text; the exception propagates
                    self._recorder.__exit__(exc_type, exc, tb)
                    self.status = "failed"
        finally:
            self.store.close()
        return False


def track(config: Mapping[str, Any], store: str | os.PathLike | ResultsStore, *, sweep: str | None = None,
          force: bool = False, checkpoint_dir: str | os.PathLike = "checkpoints",
          meta: Mapping[str, Any] | None = None) -> TrackedRun:
    """Open the run `config` describes in `store` (a path, a store URL or a ResultsStore), linked to
    `sweep`, for a `with` block (module docstring). `meta`: more provenance for the run's meta
    (e.g. {"data": the data's meta with its fingerprint}). ValueError (one line) for a bad config."""
    config = checked_config(config)
    if not isinstance(store, ResultsStore):
        store = ResultsStore(os.fspath(store))
    run = TrackedRun(config, store, sweep=sweep, force=force, checkpoint_dir=checkpoint_dir, meta=meta)
    try:
        run._open()
    except BaseException:
        store.close()
        raise
    return run
