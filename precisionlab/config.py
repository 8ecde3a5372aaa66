"""The config of a run: what every key means and which values are accepted.

`validate(cfg)` resolves a composed config and checks every value training uses,
raising `ConfigError` (or the data loader's `DataError`) with one line naming the key,
what was given and what is accepted. The CLI turns that line into exit code 2.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from precisionlab.quant.linear import PrecisionConfig
from precisionlab.runtime import DeviceError, resolve_device
from precisionlab.train.data import check_data_config
from precisionlab.train.measure import METRICS as SHARPNESS_METRICS
from precisionlab.train.model import ModelConfig

__all__ = ["ConfigError", "validate", "SCHEDULES"]

SCHEDULES = ("cosine", "constant")


class ConfigError(ValueError):
    """A config value the user must fix; the message names the key and what is accepted."""


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
    try:
        resolve_device(cfg.device)
    except DeviceError as err:
        raise ConfigError(str(err)) from None
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
