"""A run's identity: the hash of its semantic config.

Two configs that train the same thing get the same id, so the same run in two sweeps, on
another machine or writing elsewhere is one run, and a rerun of a sweep skips its finished
runs. The hash covers the *semantic* config (`semantic_config`):

  - the resolved config as plain JSON, numbers normalised (1 and 1.0 are one value);
  - minus `NON_SEMANTIC_KEYS` (where a run writes, how fast it runs, what it measures on the side);
  - minus every leaf whose value equals its `NEUTRAL` value: the schema default of the
    version that introduced the key, which reproduces what runs computed before the key
    existed. So a release that adds a knob at its neutral default leaves every existing id
    unchanged, and a rerun of an old sweep still skips its finished runs;
  - tagged with `IDENTITY_VERSION`.

How to add a config key: give it a default that reproduces the old behaviour and add
`"group.key": that_default` to `NEUTRAL`. Never change an entry of `NEUTRAL` (not even when
the schema's default changes later: the table records what the key meant when it appeared).
A release that changes what an existing config computes bumps `IDENTITY_VERSION`, which
changes every id; the store records the version its ids were computed with and migrates an
older store's ids on open (`precisionlab.store.results`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["NON_SEMANTIC_KEYS", "NEUTRAL", "IDENTITY_VERSION", "run_id", "semantic_config", "canonical", "dumps"]

# Bumped only when a release changes what an existing config computes (every id changes).
# 1: hash of the whole config (0.1); 2: neutral defaults left out, numbers normalised (0.2).
IDENTITY_VERSION = 2

# Config keys that do not change what a run computes, so they are left out of
# its id: the same run in two sweeps, on another machine or writing elsewhere
# is one run. A dotted name drops that exact path ("checkpoint.dir"); a plain
# name drops that key at any depth ("device" drops "train.device" too).
NON_SEMANTIC_KEYS = frozenset({
    "hydra", "store", "sweep", "paths", "launcher",  # where and as part of what it runs
    "output_dir", "out_dir", "checkpoint_dir", "checkpoint.dir", "log_dir",
    "device", "threads", "num_threads", "torch_threads",  # where and how fast, not what it trains
    "progress", "verbose", "resume", "force", "jobs",
    "sharpness",  # what training measures on the side (sharpness.every), never the curve it trains
    "diagnostics",  # likewise (diagnostics.every: casts, gradient fidelity, proxies)
    "loggers",  # which experiment trackers see the run (train.loggers, the loggers group), never what it computes
})

# Each config leaf's neutral value (dotted path -> value), frozen when the key was introduced:
# a leaf at its neutral value is left out of the id. Identity version 2 (precisionlab 0.2) starts
# the table with every key of that release at its schema default. Append, never edit.
NEUTRAL: Mapping[str, Any] = {
    # introduced with identity version 2 (precisionlab 0.2)
    "seed": 0,
    "model.arch": "gpt2",
    "model.vocab_size": 256,
    "model.block_size": 64,
    "model.n_layer": 2,
    "model.n_head": 4,
    "model.n_embd": 128,
    "model.mlp_hidden": None,
    "model.dropout": 0,
    "model.bias": None,
    "model.tie_weights": True,
    "model.rope_theta": 10000,
    "model.norm_eps": 1e-05,
    "precision.name": "fp32",
    "precision.format": "fp32",
    "precision.x": "fp32",
    "precision.w": "fp32",
    "precision.grad": "fp32",
    "precision.rounding": "nearest_even",
    "precision.saturate": True,
    "precision.subnormals": True,
    "precision.scaling": "none",
    "precision.pow2_scale": True,
    "precision.exclude": [],
    "data.source": "stdlib",
    "data.vocab_size": 256,
    "data.budget_bytes": 4000000,
    "data.val_fraction": 0.1,
    "data.cache_dir": None,
    "data.path": None,
    "data.glob": "**/*.txt",
    "optim.name": "adamw",
    "optim.lr": 0.003,
    "optim.betas": [0.9, 0.95],
    "optim.eps": 1e-08,
    "optim.weight_decay": 0.1,
    "optim.warmup_steps": 20,
    "optim.schedule": "cosine",
    "optim.min_lr_ratio": 0.1,
    "optim.grad_clip": 1,
    "train.steps": 200,
    "train.batch_size": 16,
    "train.seq_len": 64,
    "train.eval_every": 50,
    "train.eval_batches": 4,
    "train.eval_seed": 1234,
    "train.checkpoint_steps": [],
    "train.checkpoint_every": 0,
    "train.divergence.factor": 1,
    "train.spikes.factor": 1.5,
    "train.spikes.window": 20,
    # whole files held out for validation (issue 13): the default changed, so the built-in data's ids did
    "data.split": "tail",
    # loss spikes by robust z-score (issue 13); spikes are counted, never trained on: runs keep their ids
    "train.spikes.z": 8,
    # six operand casts, Hadamard transforms, kept layers (issue 11)
    **{f"precision.operands.{op}.{opt}": None for op in ("fwd_x", "fwd_w", "dgrad_g", "dgrad_w", "wgrad_g", "wgrad_x")
       for opt in ("format", "rounding", "saturate", "subnormals", "scaling", "pow2_scale")},
    "precision.hadamard.size": 0,
    "precision.hadamard.gemms": ["wgrad"],
    "precision.hadamard.signs": "fixed",
    "precision.keep.format": "bf16",
    "precision.keep.first": 0,
    "precision.keep.last": 0,
    "precision.keep.match": [],
    # delayed scaling (issue 16)
    "precision.delayed.history_len": 1024,
    "precision.delayed.algo": "max",
    "precision.delayed.margin": 0,
    # limited-precision accumulation (issue 16)
    "precision.accumulate.format": None,
    "precision.accumulate.k": 1,
    "precision.accumulate.promote": 0,
    "precision.accumulate.rounding": "nearest_even",
    "precision.accumulate.gemms": ["fwd", "dgrad", "wgrad"],
    "precision.weight_grad": "fp32",
    # optimizer moments in a format (issue 16's msamp_o2; issue 12)
    "optim.state_format": "fp32",
    "optim.exp_avg_format": "fp32",
    "optim.exp_avg_sq_format": "fp32",
    # stability mitigations (issue 12)
    "model.qk_norm": False,
    "optim.z_loss": 0,
    # attention matmuls cast (issue 12)
    "precision.attention.format": "fp32",
    **{f"precision.attention.{t}.{opt}": None for t in ("q", "k", "p", "v", "grad")
       for opt in ("format", "rounding", "saturate", "subnormals", "scaling", "pow2_scale")},
    # master weights in a format (issue 12)
    "optim.master_format": "fp32",
    "optim.master_rounding": "nearest_even",
    # branching runs (issue 12)
    "init.parent": None,
    # divergence rules (issue 27): `factor` is what every run computed before, so runs that name it keep
    # their ids; the new default `median` (runs continue past the old bound) changes the ids of default configs
    "train.divergence.rule": "factor",
    "train.divergence.window": 20,
    "train.divergence.margin": 0,
    # Hugging Face architectures (model.arch=hf): null for every other model
    "model.hf": None,
}


def canonical(value: Any, path: str = "", *, semantic: bool = True) -> Any:
    """JSON-ready plain copy of a config (dicts, DictConfigs, lists, scalars),
    without the non-semantic keys when `semantic`."""
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            dotted = f"{path}.{key}" if path else str(key)
            if semantic and (str(key) in NON_SEMANTIC_KEYS or dotted in NON_SEMANTIC_KEYS):
                continue
            out[str(key)] = canonical(item, dotted, semantic=semantic)
        return out
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [canonical(item, path, semantic=semantic) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)  # paths, enums, dtypes


def _normalised(value: Any) -> Any:
    """Numbers by value: an integral float becomes an int (`optim.lr=1` and `1.0` are one run)."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_normalised(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalised(v) for k, v in value.items()}
    return value


def semantic_config(config: Mapping[str, Any], neutral: Mapping[str, Any] = NEUTRAL) -> dict[str, Any]:
    """What a run's id hashes: `config` without non-semantic keys and without leaves at their
    neutral value, numbers normalised; groups left empty are dropped."""

    def prune(node: dict, path: str) -> dict:
        out = {}
        for key, value in node.items():
            dotted = f"{path}.{key}" if path else key
            if isinstance(value, dict) and value:
                value = prune(value, dotted)
                if value:
                    out[key] = value
            elif not (dotted in neutral and _normalised(neutral[dotted]) == value
                      and type(_normalised(neutral[dotted])) is type(value)):
                out[key] = value
        return out

    return prune(_canonical_precision(_normalised(canonical(config))), "")


_FORMAT_LEAVES = ("format", "x", "w", "grad")


def _canonical_precision(config: dict) -> dict:
    """Spellings of one computation hash alike: a block format becomes its canonical generic
    spelling (mxfp8 = mxfp8_e4m3 = e4m3fn/b32/e8m0), the Hadamard GEMMs are listed in GEMM order
    and dropped (with the signs) while the transform is off. Element-format names stay as typed:
    ids recorded before block formats existed hash them so."""
    precision = config.get("precision")
    if not isinstance(precision, dict):
        return config
    from precisionlab.numerics.blocks import BlockFormat, parse_format  # neither imports the store
    from precisionlab.quant.operands import GEMMS

    def spelled(name: Any) -> Any:
        if not isinstance(name, str):
            return name
        try:
            fmt = parse_format(name)
        except ValueError:
            return name
        return fmt.spelling if isinstance(fmt, BlockFormat) else name

    def spelled_in(settings: Any) -> Any:  # a config node with its "format" leaf spelled
        return {k: spelled(v) if k == "format" else v for k, v in settings.items()} if isinstance(settings, dict) else settings

    precision = dict(precision)
    for key in _FORMAT_LEAVES:
        if key in precision:
            precision[key] = spelled(precision[key])
    if isinstance(precision.get("operands"), dict):
        precision["operands"] = {op: spelled_in(settings) for op, settings in precision["operands"].items()}
    if isinstance(precision.get("keep"), dict):
        precision["keep"] = spelled_in(precision["keep"])
    if isinstance(precision.get("attention"), dict):  # its format and each tensor's
        precision["attention"] = {k: spelled_in(v) for k, v in spelled_in(precision["attention"]).items()}
    hadamard = precision.get("hadamard")
    if isinstance(hadamard, dict):
        if not hadamard.get("size"):
            hadamard = {k: v for k, v in hadamard.items() if k not in ("gemms", "signs")}
        elif isinstance(hadamard.get("gemms"), list):
            order = {gemm: i for i, gemm in enumerate(GEMMS)}
            hadamard = {**hadamard, "gemms": sorted(set(hadamard["gemms"]), key=lambda g: (order.get(g, len(GEMMS)), g))}
        precision["hadamard"] = hadamard
    return {**config, "precision": precision}


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def run_id(config: Mapping[str, Any]) -> str:
    """Stable id of a run: the first 16 hex digits of sha256 over the JSON (sorted keys) of
    {"identity": IDENTITY_VERSION, "config": semantic_config(config)}."""
    payload = {"identity": IDENTITY_VERSION, "config": semantic_config(config)}
    return hashlib.sha256(dumps(payload).encode()).hexdigest()[:16]
