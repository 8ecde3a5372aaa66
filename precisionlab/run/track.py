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

The model factory, for `precisionlab sharpness`: `track(..., model_factory="package.module:function")`
(or that function itself, defined at the top level of an importable module: not a lambda, a local
function or one of a script run as __main__) names how to rebuild the loop's model. It is recorded in
the run's meta (not its config: it does not change the run id) and checked at track() time (one-line
ValueError). The contract: `factory(config) -> torch.nn.Module`, called with the run's stored config,
returns the model UNCONVERTED (fp32, no casts), whose forward takes token ids (B, T) and returns
logits (B, T, V), an object with `.logits` (a Hugging Face output) or a tuple whose first element
is the logits (precisionlab's own LM). The checkpoints must hold the
converted model's weights under "model" (`run.checkpoint(step, {"model": model.state_dict()})`).
`precisionlab sharpness` then rebuilds each checkpoint's model (`rebuild`): the factory's model,
converted with `convert_model(model, config["precision"], seed=config["seed"])`, its state dict
loaded strictly; the loss it measures is the mean cross-entropy of the logits against the targets.
It also needs the config's `data` node (what precisionlab.train.data.load_dataset takes, e.g.
{"source": "stdlib", "budget_bytes": 400000}), `train.batch_size` and `train.seq_len`, for the
fixed validation batch (drawn with `train.eval_seed`, default the train schema's). A tracked run
without a factory or without those keys is refused by `precisionlab sharpness` in one line.
"""

from __future__ import annotations

import importlib
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from precisionlab.config import Spikes
from precisionlab.run.convert import convert_model, precision_node, presets
from precisionlab.run.job import busy_error
from precisionlab.store import DONE, ResultsStore, run_id
from precisionlab.store.identity import canonical
from precisionlab.store.results import config_value
from precisionlab.train.checkpoint import CHECKPOINT_FORMAT, checkpoint_path, save_checkpoint
from precisionlab.train.outcomes import NoRule, SpikeCounter, reference_loss

__all__ = ["track", "TrackedRun", "TRACKER", "REQUIRED", "SHARPNESS_NEEDS", "factory_name", "load_factory",
           "FactoryLM", "rebuild"]

TRACKER = "precisionlab.track"  # run meta "tracker": the run was recorded by a user's loop
REQUIRED = ("precision", "optim.lr", "seed", "model.vocab_size", "train.steps")
SHARPNESS_NEEDS = ("data", "train.batch_size", "train.seq_len")  # config keys `precisionlab sharpness` reads
FACTORY_FORM = "a 'package.module:function' string or a function defined at the top level of an importable module"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def checked_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` as it is stored: checked (one-line ValueError naming the key and what it takes), its
    `precision` replaced by the full precision node it means."""
    if not isinstance(config, Mapping):
        raise ValueError(f"track's config must be a dict; got {type(config).__name__}")
    missing = [key for key in REQUIRED if config_value(config, key) is None]
    if missing:
        raise ValueError(f"track's config lacks {', '.join(missing)}; it needs {', '.join(REQUIRED)} "
                         "(see precisionlab.run.track)")
    lr, seed, vocab, steps = (config_value(config, k) for k in ("optim.lr", "seed", "model.vocab_size", "train.steps"))
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


def load_factory(name: str) -> Callable[..., Any]:
    """The function `name` ("package.module:function") names; ValueError (one line) when it cannot be imported."""
    module_name, _, attribute = name.partition(":") if isinstance(name, str) else ("", "", "")
    if not (module_name and attribute):
        raise ValueError(f"model_factory {name!r} is not {FACTORY_FORM}")
    try:
        found: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except Exception as err:  # ImportError, AttributeError, or the module's own error at import
        raise ValueError(f"model_factory {name!r} cannot be imported ({type(err).__name__}: "
                         f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}); it must be {FACTORY_FORM}, "
                         "importable where the run and `precisionlab sharpness` run (PYTHONPATH)") from None
    if not callable(found):
        raise ValueError(f"model_factory {name!r} is a {type(found).__name__}, not a function")
    return found


def factory_name(factory: str | Callable[..., Any]) -> str:
    """The "module:qualname" text of `factory` (module docstring), checked importable; ValueError (one line) otherwise."""
    if isinstance(factory, str):
        load_factory(factory)
        return factory
    module, qualname = getattr(factory, "__module__", None), getattr(factory, "__qualname__", None)
    if not (callable(factory) and module and qualname):
        raise ValueError(f"model_factory must be {FACTORY_FORM}; got {type(factory).__name__}")
    if "<lambda>" in qualname or "<locals>" in qualname or module == "__main__":
        raise ValueError(f"model_factory {module}:{qualname} cannot be imported by another process: it must be "
                         f"{FACTORY_FORM} (move it into a module of its own)")
    name = f"{module}:{qualname}"
    if load_factory(name) is not factory:
        raise ValueError(f"model_factory {name} imports as another object; it must be {FACTORY_FORM}")
    return name


class FactoryLM(nn.Module):
    """A factory's model (module docstring) behind precisionlab's interface `model(x, y) -> (logits, loss)`,
    the loss being the mean cross-entropy of the logits against `y`, as precisionlab.train.model.LM computes it."""

    def __init__(self, model: nn.Module, factory: Callable[..., Any], config: Mapping[str, Any]):
        super().__init__()
        self.model = model
        self._factory, self._config = factory, config

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.model(x)
        logits = out[0] if isinstance(out, (tuple, list)) else getattr(out, "logits", out)
        loss = None if y is None else F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))
        return logits, loss

    def fresh(self) -> "FactoryLM":
        """The factory's model again, without casts (its weights freshly drawn: load them): the fp32 twin's model."""
        return FactoryLM(self._factory(self._config), self._factory, self._config)


def rebuild(config: Mapping[str, Any], factory: str, weights: Mapping[str, Any],
            device: str | torch.device = "cpu") -> FactoryLM:
    """A tracked run's model at a checkpoint: the factory's model converted to the run's precision,
    `weights` (the converted model's state dict) loaded strictly, in eval mode on `device`."""
    function = load_factory(factory)
    with torch.random.fork_rng(devices=[]):  # building a model draws init weights: leave the RNG alone
        model = function(config)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model_factory {factory} returned a {type(model).__name__}, not a torch.nn.Module")
    model = convert_model(model, config["precision"], seed=int(config["seed"]))
    model.load_state_dict(weights)
    return FactoryLM(model, function, config).to(device).eval()


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
          meta: Mapping[str, Any] | None = None,
          model_factory: str | Callable[..., Any] | None = None) -> TrackedRun:
    """Open the run `config` describes in `store` (a path, a store URL or a ResultsStore), linked to
    `sweep`, for a `with` block (module docstring). `meta`: more provenance for the run's meta
    (e.g. {"data": the data's meta with its fingerprint}). `model_factory`: how `precisionlab
    sharpness` rebuilds the model (module docstring), recorded in the meta. ValueError (one line)
    for a bad config or factory."""
    config = checked_config(config)
    if model_factory is not None:
        meta = {**(meta or {}), "model_factory": factory_name(model_factory)}
    if not isinstance(store, ResultsStore):
        store = ResultsStore(os.fspath(store))
    run = TrackedRun(config, store, sweep=sweep, force=force, checkpoint_dir=checkpoint_dir, meta=meta)
    try:
        run._open()
    except BaseException:
        store.close()
        raise
    return run
