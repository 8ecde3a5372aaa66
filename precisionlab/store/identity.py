"""A run's identity: the hash of its semantic config.

Two configs that train the same thing get the same id, so the same run in two sweeps,
on another machine or writing elsewhere is one run, and a rerun of a sweep skips its
finished runs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["NON_SEMANTIC_KEYS", "run_id", "canonical", "dumps"]

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
})


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


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def run_id(config: Mapping[str, Any]) -> str:
    """Stable id of a run: first 16 hex digits of sha256 over the canonical JSON
    (sorted keys) of its config without `NON_SEMANTIC_KEYS`."""
    return hashlib.sha256(dumps(canonical(config)).encode()).hexdigest()[:16]
