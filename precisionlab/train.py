"""One training run: `run(cfg) -> RunResult`, pure (no Hydra), never raises once training starts.

The loop: AdamW on fp32 master weights, linear warmup then cosine (or
constant) learning rate, gradient-norm clipping, a fixed set of validation
batches evaluated every `train.eval_every` steps and at the end, checkpoints
at `train.checkpoint_steps` / every `train.checkpoint_every` steps.

Outcomes:
  diverged  the train loss is NaN/Inf, or after warmup (step > optim.warmup_steps)
            exceeds `train.divergence.factor` x the initial loss (the train loss
            of step 1). The run stops at once; `diverged_step` is that step.
  failed    any other exception during training; `error` holds its text.
  completed otherwise.
User-config errors (`ConfigError`, `DataError`) are raised by `validate` and
before the first step, so nothing is recorded for a run that cannot start.

Loss spikes: step t is a spike step when its train loss exceeds
`train.spikes.factor` x the median of the previous `train.spikes.window` train
losses (checked once that many exist); a run of consecutive spike steps
counts as one spike.

Sharpness: with `sharpness.every=N` the `sharpness.metrics` are measured every N
steps (after that step's checkpoint) on the first fixed validation batch, exactly as
`precisionlab sharpness` measures a checkpoint (precisionlab.measure), and reported
through the recorder's optional `sharpness` hook. Measuring draws no random numbers,
keeps the stochastic-rounding call counts, the weights and their gradients, so the
curve is the same as without it.

Reproducibility: `run` seeds torch's global RNG (model init, dropout) and a
private generator for batches from `seed`, and sets torch's thread count,
so runs in one process do not leak state. Checkpoints hold the model,
optimizer, both RNG states, the step and the loop's bookkeeping, so resuming
continues the loss curve bit for bit on CPU.
"""

from __future__ import annotations

import math
import os
import platform
from importlib.metadata import PackageNotFoundError, version
import statistics
import tempfile
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from precisionlab.data import DataError, check_data_config, get_batch, load_dataset
from precisionlab.measure import METRICS as SHARPNESS_METRICS
from precisionlab.measure import Settings as SharpnessSettings
from precisionlab.measure import is_fp32, measure, planned
from precisionlab.model import LM, ModelConfig
from precisionlab.quant import PrecisionConfig, convert_model
from precisionlab.recorder import Recorder

__all__ = ["run", "RunResult", "ConfigError", "validate", "build_model", "load_checkpoint", "eval_batches", "lr_at", "SpikeCounter"]

CHECKPOINT_FORMAT = "precisionlab-checkpoint-1"
SCHEDULES = ("cosine", "constant")


class ConfigError(ValueError):
    """A config value the user must fix; the message names the key and what is accepted."""


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


# -- config -------------------------------------------------------------------


def validate(cfg: Any) -> DictConfig:
    """Resolve `cfg` and check every value training uses; returns the resolved config or raises ConfigError/DataError."""
    try:
        cfg = OmegaConf.create(OmegaConf.to_container(OmegaConf.create(cfg), resolve=True))
        _validate(cfg)
    except OmegaConfBaseException as err:  # unresolvable interpolations, missing keys
        raise ConfigError(f"config error: {str(err).splitlines()[0]}") from None
    return cfg


def _validate(cfg: DictConfig) -> None:
    t, o = cfg.train, cfg.optim
    _check(isinstance(cfg.seed, int) and cfg.seed >= 0, "seed must be an integer >= 0", cfg.seed)
    for key in ("steps", "batch_size", "seq_len", "eval_batches"):
        _check(isinstance(t[key], int) and t[key] > 0, f"train.{key} must be a positive integer", t[key])
    for key in ("eval_every", "checkpoint_every"):
        _check(isinstance(t[key], int) and t[key] >= 0, f"train.{key} must be an integer >= 0 (0: never)", t[key])
    _check(all(isinstance(s, int) and s > 0 for s in t.checkpoint_steps), "train.checkpoint_steps must be a list of positive steps", t.checkpoint_steps)
    _check(t.threads is None or (isinstance(t.threads, int) and t.threads > 0), "train.threads must be a positive integer or null (all cores)", t.threads)
    _check(_number(t.divergence.factor) and t.divergence.factor > 0, "train.divergence.factor must be > 0", t.divergence.factor)
    _check(_number(t.spikes.factor) and t.spikes.factor > 1, "train.spikes.factor must be > 1", t.spikes.factor)
    _check(isinstance(t.spikes.window, int) and t.spikes.window > 0, "train.spikes.window must be a positive integer", t.spikes.window)
    _check(o.name == "adamw", "optim.name must be adamw", o.name)
    _check(_number(o.lr) and 0 < o.lr < math.inf, "optim.lr must be a positive number", o.lr)
    _check(isinstance(o.warmup_steps, int) and o.warmup_steps >= 0, "optim.warmup_steps must be an integer >= 0", o.warmup_steps)
    _check(o.schedule in SCHEDULES, f"optim.schedule must be one of {', '.join(SCHEDULES)}", o.schedule)
    _check(_number(o.min_lr_ratio) and 0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio must be in [0, 1]", o.min_lr_ratio)
    _check(_number(o.grad_clip) and o.grad_clip >= 0, "optim.grad_clip must be >= 0 (0: no clipping)", o.grad_clip)
    _check(_number(o.weight_decay) and o.weight_decay >= 0, "optim.weight_decay must be >= 0", o.weight_decay)
    _check(len(o.betas) == 2 and all(_number(b) and 0 <= b < 1 for b in o.betas), "optim.betas must be two numbers in [0, 1)", list(o.betas))
    _check(_number(o.eps) and o.eps > 0, "optim.eps must be > 0", o.eps)
    try:
        model_cfg = ModelConfig(**cfg.model)
        PrecisionConfig.from_cfg(cfg.precision)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err).replace("__init__() got an unexpected keyword argument", "model: unknown key")) from None
    _check(t.seq_len <= model_cfg.block_size, f"train.seq_len must be <= model.block_size ({model_cfg.block_size})", t.seq_len)
    _device(cfg.device)
    check_data_config(cfg.data)
    s = cfg.get("sharpness") or {}
    every, metrics, eps = s.get("every", 0), s.get("metrics", ["logit"]), s.get("eps", 1e-3)
    _check(isinstance(every, int) and not isinstance(every, bool) and every >= 0, "sharpness.every must be an integer >= 0 (0: off)", every)
    _check(not isinstance(metrics, str) and all(m in SHARPNESS_METRICS for m in metrics),
           f"sharpness.metrics must be a list of {', '.join(SHARPNESS_METRICS)}, e.g. [logit,keskar]", metrics)
    _check(_number(eps) and 0 <= eps < math.inf, "sharpness.eps must be a finite number >= 0", eps)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def _check(ok: bool, message: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{message}; got {value!r}")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N; got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available here; use device=auto or device=cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N; got {name!r}")
    return device


# -- building blocks shared with sweeps and sharpness ---------------------------


def build_model(cfg: Any) -> LM:
    """The model of `cfg.model` with `cfg.precision`'s quantized GEMMs (on CPU; seed torch first)."""
    model = LM(ModelConfig(**cfg.model))
    return convert_model(model, cfg.precision, seed=int(cfg.seed))


def lr_at(step: int, optim: Any, total_steps: int) -> float:
    """Learning rate for 1-based `step`: linear warmup to optim.lr, then cosine to min_lr_ratio * lr (or constant)."""
    if step <= optim.warmup_steps:
        return optim.lr * step / optim.warmup_steps
    if optim.schedule == "constant":
        return optim.lr
    progress = (step - optim.warmup_steps) / max(1, total_steps - optim.warmup_steps)
    floor = optim.min_lr_ratio * optim.lr
    return floor + (optim.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def eval_batches(val_tokens: Any, cfg: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed validation batches: drawn with `train.eval_seed`, identical for every run and seed."""
    generator = torch.Generator().manual_seed(int(cfg.train.eval_seed))
    return [get_batch(val_tokens, cfg.train.batch_size, cfg.train.seq_len, generator) for _ in range(cfg.train.eval_batches)]


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


# -- checkpoints ------------------------------------------------------------------


class Checkpoint(NamedTuple):
    model: LM  # rebuilt from the stored config, weights loaded, in eval mode
    cfg: DictConfig  # the run's resolved config
    step: int  # steps done when saved
    state: dict  # everything stored (optimizer, rng, progress, data meta)


def save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as tmp:
        torch.save(state, tmp)
    os.replace(tmp.name, path)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model of a checkpoint (quantized GEMMs included) and load its weights."""
    state = torch.load(path, map_location=device, weights_only=True)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a precisionlab checkpoint")
    cfg = OmegaConf.create(state["config"])
    model = build_model(cfg).to(device)
    model.load_state_dict(state["model"])
    return Checkpoint(model.eval(), cfg, int(state["step"]), state)


# -- the run ------------------------------------------------------------------------


def run(cfg: Any, recorder: Recorder | None = None, resume_from: str | os.PathLike | None = None) -> RunResult:
    """Train one model as `cfg` says; see the module docstring for outcomes and definitions.

    `recorder` gets the metadata, per-step metrics, checkpoints and outcome
    (default: `RunDirRecorder` on the current directory). `resume_from` is a
    checkpoint path written by an earlier run with the same config.
    """
    cfg = validate(cfg)
    t = cfg.train
    device = _device(cfg.device)
    torch.set_num_threads(t.threads or os.cpu_count() or 1)
    if resume_from is not None and not Path(resume_from).is_file():
        raise ConfigError(f"checkpoint to resume from {str(resume_from)!r} does not exist")
    torch.manual_seed(cfg.seed)
    batch_gen = torch.Generator().manual_seed(cfg.seed)
    try:
        train_tokens, val_tokens, data_meta = load_dataset(cfg.data)
    except OSError as err:
        raise DataError(f"cannot read the data: {err}") from None
    for split, tokens in (("train", train_tokens), ("val", val_tokens)):
        if len(tokens) <= t.seq_len:
            raise DataError(f"the {split} split has {len(tokens)} tokens, fewer than train.seq_len + 1 = {t.seq_len + 1}")
    if recorder is None:
        from precisionlab.rundir import RunDirRecorder

        recorder = RunDirRecorder(".")
    result = RunResult(status="completed")
    try:
        _train(cfg, device, batch_gen, train_tokens, val_tokens, data_meta, recorder, resume_from, result)
    except Exception as err:  # never crash a sweep: record the failure
        result.status, result.error = "failed", f"{type(err).__name__}: {err}"
    recorder.finish(asdict(result))
    return result


def _train(cfg, device, batch_gen, train_tokens, val_tokens, data_meta, recorder, resume_from, result: RunResult) -> None:
    t, o = cfg.train, cfg.optim
    model = build_model(cfg).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]  # no weight decay on biases and norms
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=o.lr, betas=tuple(o.betas), eps=o.eps,
    )
    spikes = SpikeCounter(t.spikes.factor, t.spikes.window)
    start_step, elapsed0 = 0, 0.0
    if resume_from is not None:
        state = torch.load(resume_from, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        batch_gen.set_state(state["rng"]["batches"].cpu())
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), device)
        progress = state["progress"]
        start_step, elapsed0 = int(state["step"]), progress["elapsed"]
        result.initial_loss, result.min_val_loss = progress["initial_loss"], progress["min_val_loss"]
        result.final_val_loss = progress["final_val_loss"]
        spikes.load(progress["spikes"])
    val_batches = eval_batches(val_tokens, cfg)
    checkpoint_steps = set(t.checkpoint_steps)
    sharpness_every = (cfg.get("sharpness") or {}).get("every", 0)
    recorder.start({
        "config": OmegaConf.to_container(cfg), "data": data_meta, "device": str(device),
        "n_params": model.num_params(), "resumed_from": None if resume_from is None else str(resume_from),
        "start_step": start_step, "versions": _versions(),
    })
    tokens_per_step = t.batch_size * t.seq_len
    started = time.perf_counter()
    model.train()
    for step in range(start_step + 1, t.steps + 1):
        lr = lr_at(step, o, t.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = get_batch(train_tokens, t.batch_size, t.seq_len, batch_gen)
        _, loss = model(x.to(device), y.to(device))
        loss_value = loss.item()
        if math.isfinite(loss_value):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip or math.inf).item()
            optimizer.step()
        else:
            grad_norm = math.nan
        if result.initial_loss is None:
            result.initial_loss = loss_value
        spikes.update(loss_value)
        result.steps_done, result.final_train_loss, result.spikes = step, loss_value, spikes.count
        recorder.log(step, "train", {
            "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
            "tokens": step * tokens_per_step, "elapsed": elapsed0 + time.perf_counter() - started,
        })
        bound = t.divergence.factor * result.initial_loss
        if not math.isfinite(loss_value) or (step > o.warmup_steps and loss_value > bound):
            result.status, result.diverged_step = "diverged", step
            return
        if (t.eval_every and step % t.eval_every == 0) or step == t.steps:
            result.final_val_loss = _evaluate(model, val_batches, device)
            result.min_val_loss = min(result.min_val_loss or math.inf, result.final_val_loss)
            recorder.log(step, "val", {"loss": result.final_val_loss})
        if step in checkpoint_steps or (t.checkpoint_every and step % t.checkpoint_every == 0):
            path = Path(t.checkpoint_dir) / f"step_{step:07d}.pt"
            save_checkpoint(path, {
                "format": CHECKPOINT_FORMAT, "step": step, "config": OmegaConf.to_container(cfg),
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "data": data_meta,
                "rng": {"torch": torch.get_rng_state(), "batches": batch_gen.get_state(),
                        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
                "progress": {"initial_loss": result.initial_loss, "min_val_loss": result.min_val_loss,
                             "final_val_loss": result.final_val_loss, "spikes": spikes.state(),
                             "elapsed": elapsed0 + time.perf_counter() - started},
            })
            result.checkpoints.append((step, str(path.resolve())))
            recorder.checkpoint(step, str(path.resolve()))
        if sharpness_every and step % sharpness_every == 0:  # after the checkpoint: the same state it holds
            _record_sharpness(model, val_batches[0], cfg, step, recorder)


def _record_sharpness(model: LM, batch: tuple, cfg: DictConfig, step: int, recorder: Recorder) -> None:
    """`sharpness.metrics` on the first fixed validation batch, as `precisionlab sharpness` measures
    them (same params, same store key); the model, RNG and gradients are left as they were."""
    hook = getattr(recorder, "sharpness", None)  # optional in the Recorder protocol
    if hook is None:
        return
    s = cfg.sharpness
    settings = SharpnessSettings(eps=(float(s.eps),))
    for metric, params in planned(list(s.metrics), settings, batch[0].shape[0], run_is_fp32=is_fp32(cfg)):
        values = measure(model, batch, metric, params)
        for name in sorted(values, key=lambda name: name == metric):
            hook(step, name, values[name], params)


def _versions() -> dict[str, str | None]:
    found = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("triton", "precisionlab"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


@torch.no_grad()
def _evaluate(model: LM, batches: list, device: torch.device) -> float:
    model.eval()
    losses = [model(x.to(device), y.to(device))[1].item() for x, y in batches]
    model.train()
    return sum(losses) / len(losses)
