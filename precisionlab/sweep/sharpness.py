"""`precisionlab sharpness`: measure the stored checkpoints of a sweep, resumably.

Each checkpoint lacking a (metric, params) value is claimed in the store (so concurrent
processes split the work, and a claim of a dead process is taken over), loaded, measured on the run's first
fixed validation batch exactly as training measures it (`precisionlab.train.sharpness`),
and every value is written to the store as soon as it is known. The CLI (`precisionlab sharpness`)
only parses its options and prints what this module returns.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf
from tqdm import tqdm

from precisionlab.config import memory_shortfall
from precisionlab.quant.recipe import PrecisionConfig
from precisionlab.run.track import TRACKER
from precisionlab.train.checkpoint import load_checkpoint
from precisionlab.train.data import load_dataset
from precisionlab.train.loop import eval_batches
from precisionlab.train.sharpness import Settings, measure, params_key, planned

__all__ = ["Outcome", "measure_checkpoints"]


@dataclass
class Outcome:
    computed: int = 0  # values measured and written now
    skipped: int = 0  # values the store already had
    busy: int = 0  # values another live process is measuring now (claimed in the store)
    unreadable: list[str] | None = None  # checkpoints that could not be loaded: "path (why)"


def check_batch_size(store: Any, sweep: str, batch_size: int | None, device: str = "cpu") -> None:
    """ValueError when the sweep holds runs recorded by a user's own loop (`precisionlab.track`: no
    model this module can rebuild), or when `batch_size` sequences give a token count that a run's
    weight-gradient Hadamard transform cannot divide, or a step of its model that cannot fit in
    `device`'s memory (the run's own train.batch_size passed both checks)."""
    runs = store.runs(sweep=sweep)
    tracked = [row.run_id for row in runs.itertuples()
               if isinstance(getattr(row, "meta", None), dict) and row.meta.get("tracker") == TRACKER]
    if tracked:
        raise ValueError(f"sweep {sweep!r} holds runs recorded by precisionlab.track ({', '.join(tracked[:3])}"
                         f"{', ...' if len(tracked) > 3 else ''}): precisionlab sharpness measures only models it can "
                         "rebuild from a run's config (precisionlab train and sweep runs)")
    if batch_size is None:
        return
    for row in runs.itertuples():
        cfg = row.config
        short = memory_shortfall(cfg.get("model") or {}, batch_size, int(cfg["train"]["seq_len"]), device)
        if short:
            raise ValueError(f"--batch-size {batch_size}: a step of run {row.run_id}'s model on that many sequences "
                             f"needs at least {short}; lower --batch-size (default: the run's train.batch_size)")
        casts = PrecisionConfig.from_cfg(cfg["precision"]).casts
        size, tokens = casts.hadamard, batch_size * int(cfg["train"]["seq_len"])
        if casts.rotates("wgrad") and tokens % size:
            raise ValueError(f"--batch-size {batch_size} gives {tokens} tokens per batch, which run {row.run_id}'s "
                             f"weight-gradient Hadamard transform (size {size}) cannot divide; use a batch size whose "
                             f"tokens (x train.seq_len {cfg['train']['seq_len']}) are a multiple of {size}")


def measure_checkpoints(store: Any, sweep: str, metrics: Sequence[str], settings: Settings,
                        batch_size: int | None = None, device: str = "cpu", progress: bool | None = None) -> Outcome:
    """Measure every stored checkpoint of `sweep` that lacks a (metric, params) value; write each
    value to `store` as soon as it is known, so an interrupted call loses at most one."""
    checkpoints = store.checkpoints(sweep=sweep)
    have = {(r.run_id, int(r.step), r.metric, params_key(r.params))
            for r in store.sharpness(sweep=sweep).itertuples()}
    outcome = Outcome(unreadable=[])
    validation: dict[str, Any] = {}  # data config -> validation split, loaded once
    bar = tqdm(checkpoints.itertuples(), total=len(checkpoints), unit="checkpoint", desc=f"sharpness {sweep}",
               file=sys.stderr, dynamic_ncols=True, disable=None if progress is None else not progress)
    configs = {r.run_id: r.config for r in store.runs(sweep=sweep).itertuples()}
    run_is_fp32 = {}  # run id -> whether its recipe casts nothing, built once per run
    for row in bar:
        config = configs[row.run_id]
        size = batch_size or int(config["train"]["batch_size"])
        if row.run_id not in run_is_fp32:
            run_is_fp32[row.run_id] = PrecisionConfig.from_cfg(config["precision"]).is_fp32
        pairs = planned(metrics, settings, size, run_is_fp32=run_is_fp32[row.run_id])
        todo = [(m, p) for m, p in pairs if (row.run_id, int(row.step), m, params_key(p)) not in have]
        outcome.skipped += len(pairs) - len(todo)
        claimed = []  # claimed in the store first, so a concurrent process never measures the same value
        for metric, params in todo:
            state = store.claim_sharpness(row.run_id, int(row.step), metric, params)
            if state == "claimed":
                claimed.append((metric, params))
            else:
                outcome.skipped += state == "done"
                outcome.busy += state == "busy"
        if not claimed:  # decided from the store alone: a finished checkpoint is not even loaded
            continue
        try:
            _measure(store, row, claimed, size, device, validation, outcome)
        finally:  # measured or not: a claim left behind would only wait for this process to exit
            for metric, params in claimed:
                store.release_sharpness(row.run_id, int(row.step), metric, params)
    bar.close()
    return outcome


def _measure(store: Any, row: Any, todo: list, size: int, device: str, validation: dict, outcome: Outcome) -> None:
    """Load checkpoint `row` and write each (metric, params) of `todo` into `store`."""
    try:
        model, cfg, _, _ = load_checkpoint(row.path, device, run_id=row.run_id, step=int(row.step))
    except Exception as err:  # a deleted, torn or damaged file, or another run's: report it, measure the rest
        outcome.unreadable.append(f"{row.path} ({type(err).__name__}: {err})")
        return
    data_key = json.dumps(OmegaConf.to_container(cfg.data), sort_keys=True)
    if data_key not in validation:
        validation[data_key] = load_dataset(cfg.data)[1]
    cfg.train.batch_size, cfg.train.eval_batches = size, 1  # the first fixed validation batch, `size` sequences
    batch = eval_batches(validation[data_key], cfg)[0]
    for metric, params in todo:
        values = measure(model, batch, metric, params)
        for name in sorted(values, key=lambda name: name == metric):  # the metric's own row last: it marks done
            store.add_sharpness(row.run_id, int(row.step), name, values[name], params)
        outcome.computed += 1
