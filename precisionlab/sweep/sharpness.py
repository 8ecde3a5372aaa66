"""`precisionlab sharpness`: measure the stored checkpoints of a sweep, resumably.

Each checkpoint lacking a (metric, params) value is claimed in the store (so concurrent
processes split the work, and a claim of a dead process is taken over), loaded, measured on the run's first
fixed validation batch exactly as training measures it (`precisionlab.train.sharpness`),
and every value is written to the store as soon as it is known. The CLI (`precisionlab sharpness`)
only parses its options and prints what this module returns.

Runs recorded by a user's own loop (`precisionlab.track`) are measured when they were tracked with a
`model_factory` and their config holds `data`, `train.batch_size` and `train.seq_len`
(precisionlab.run.track): the model is the factory's, converted and loaded by
`precisionlab.run.track.rebuild`; the validation batch is drawn as for a training run, with the
train schema's `train.eval_seed` where the tracked config has none. Other tracked runs are refused.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf
from tqdm import tqdm

from precisionlab.config import Train, memory_shortfall
from precisionlab.quant.recipe import PrecisionConfig
from precisionlab.run.track import SHARPNESS_NEEDS, TRACKER, load_factory, rebuild
from precisionlab.store.results import config_value
from precisionlab.train.checkpoint import load_checkpoint, read_checkpoint
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


def _tracked(row: Any) -> bool:
    return isinstance(getattr(row, "meta", None), dict) and row.meta.get("tracker") == TRACKER


def _lacks(row: Any) -> list[str]:
    """What a tracked run lacks for this module to rebuild its model and validation batch."""
    missing = [] if row.meta.get("model_factory") else ["model_factory= (precisionlab.track)"]
    return missing + [dotted for dotted in SHARPNESS_NEEDS if config_value(row.config, dotted) is None]


def check_batch_size(store: Any, sweep: str, batch_size: int | None, device: str = "cpu") -> None:
    """ValueError when the sweep holds runs recorded by a user's own loop (`precisionlab.track`)
    without a model factory, data or batch shape (module docstring), or when `batch_size` sequences
    give a token count that a run's weight-gradient Hadamard transform cannot divide, or a step of its
    model that cannot fit in `device`'s memory (the run's own train.batch_size passed both checks)."""
    runs = store.runs(sweep=sweep)
    lacking_by_run = ((row.run_id, _lacks(row)) for row in runs.itertuples() if _tracked(row))
    refused = [(run, needs) for run, needs in lacking_by_run if needs]
    if refused:
        ids = [run for run, _ in refused]
        lacking = sorted({need for _, needs in refused for need in needs})
        raise ValueError(f"sweep {sweep!r} holds runs recorded by precisionlab.track ({', '.join(ids[:3])}"
                         f"{', ...' if len(ids) > 3 else ''}) lacking {', '.join(lacking)}: precisionlab sharpness "
                         "measures a tracked run only when it was tracked with model_factory= and its config holds "
                         f"{', '.join(SHARPNESS_NEEDS)} (see precisionlab.run.track)")
    for factory in sorted({row.meta["model_factory"] for row in runs.itertuples() if _tracked(row)}):
        load_factory(factory)  # one line when it cannot be imported here (PYTHONPATH), before any claim
    if batch_size is None:
        return
    for row in runs.itertuples():
        cfg = row.config
        # a factory's model has no shape this module knows: its memory is the user's to judge
        short = None if _tracked(row) else memory_shortfall(cfg.get("model") or {}, batch_size,
                                                             int(cfg["train"]["seq_len"]), device)
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
    runs = list(store.runs(sweep=sweep).itertuples())
    configs = {r.run_id: r.config for r in runs}
    factories = {r.run_id: r.meta["model_factory"] for r in runs if _tracked(r)}  # check_batch_size refused the rest
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
            _measure(store, row, claimed, size, device, validation, outcome, factories.get(row.run_id))
        finally:  # measured or not: a claim left behind would only wait for this process to exit
            for metric, params in claimed:
                store.release_sharpness(row.run_id, int(row.step), metric, params)
    bar.close()
    return outcome


def _load(row: Any, device: str, factory: str | None) -> tuple[Any, Any]:
    """Checkpoint `row`'s model and config: precisionlab's own model, or a tracked run's `factory`'s."""
    if factory is None:
        model, cfg, _, _ = load_checkpoint(row.path, device, run_id=row.run_id, step=int(row.step))
        return model, cfg
    state = read_checkpoint(row.path, device, run_id=row.run_id, step=int(row.step))
    weights = state["state"].get("model") if isinstance(state["state"], dict) else None
    if weights is None:
        raise ValueError("it holds no model weights: save them as run.checkpoint(step, {'model': model.state_dict()})")
    model = rebuild(state["config"], factory, weights, device)
    cfg = OmegaConf.create(state["config"])
    schema = Train()
    for key in ("eval_seed", "eval_batches"):  # a tracked config may lack them: the train schema's defaults
        if key not in cfg.train:
            cfg.train[key] = getattr(schema, key)
    return model, cfg


def _measure(store: Any, row: Any, todo: list, size: int, device: str, validation: dict, outcome: Outcome,
             factory: str | None = None) -> None:
    """Load checkpoint `row` and write each (metric, params) of `todo` into `store`."""
    try:
        model, cfg = _load(row, device, factory)
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
