"""One grid point of a sweep, in whatever process the launcher picked, and `precisionlab train`'s run.

`run_job` claims its run in the store (skip: completed or diverged, unless forced, or
running in a live process elsewhere), resumes from the run's last checkpoint when an
earlier attempt was killed or failed, trains with the store and the run directory as
recorders, and never raises: a run that raises is recorded `failed` with its error and
the sweep goes on. `train_recorded` is `precisionlab train`: always computes.

A branch (`init.parent=RUN_ID@STEP`, precisionlab.train.branch) starts from its parent's checkpoint,
found in the store's checkpoints table (`parent_checkpoint`); `check_parents` checks every branch of
a command before any run starts or any row is written.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from omegaconf import DictConfig, open_dict

from precisionlab.config import ConfigError, assume_valid, ensure_valid, make_paths_absolute
from precisionlab.runtime import disk_full
from precisionlab.store import ResultsStore, StoreError, run_id
from precisionlab.store.trackers import tracker_recorders
from precisionlab.store.url import DEFAULT_JOURNAL_MODE, configured_store
from precisionlab.run.worker import exit_with_parent, threads_per_job
from precisionlab.train.branch import check_loads, parse_parent
from precisionlab.train.checkpoint import CheckpointError, CheckpointRef, read_checkpoint
from precisionlab.train.loop import run
from precisionlab.train.outcomes import RunResult
from precisionlab.train.recorder import Tee
from precisionlab.train.rundir import RunDirRecorder

__all__ = ["run_job", "recorded_run", "train_recorded", "open_store", "parent_checkpoint", "check_parents"]

log = logging.getLogger(__name__)


def recorded_run(cfg: DictConfig, store: ResultsStore, recorder: Any = None, *, sweep: str | None = None,
                 force: bool = False) -> RunResult | None:
    """Train the validated `cfg` into `store` (and `recorder`, default: the run directory "."),
    resuming from the run's last recorded checkpoint (a branch without one starts from its
    parent's); None when the store says not to
    (completed or diverged and not `force`, or running in a live process elsewhere)."""
    rid = run_id(cfg)
    if not store.claim_run(rid, cfg, sweep, force=force):
        return None
    # Everything after the claim happens inside the recorder: leaving it without an outcome records `failed`.
    with store.recorder(rid) as rec:
        checkpoint = store.latest_checkpoint(rid)
        resume_from = None
        if checkpoint is not None:
            resume_from = _own_checkpoint(rid, *checkpoint)
        if resume_from is None and cfg.init.parent is not None:
            parent = parse_parent(cfg.init.parent)
            resume_from = CheckpointRef(parent_checkpoint(store, cfg), parent.run_id, parent.step)
            log.info("run %s branches from run %s: %s", rid, cfg.init.parent, resume_from.path)
        tee = Tee(rec, recorder if recorder is not None else RunDirRecorder("."),
                  *tracker_recorders(cfg, rid, sweep),  # train.loggers: after the store, which they never hold up
                  extra_meta={"run_id": rid, "run_dir": os.getcwd(),
                              "threads": cfg.train.threads or os.cpu_count() or 1})  # as train.run sets them
        return run(cfg, recorder=tee, resume_from=resume_from, run_id=rid)


def _own_checkpoint(rid: str, step: int, path: str) -> CheckpointRef | None:
    """Run `rid`'s checkpoint at `step` to resume from, or None (with a warning) when the file is gone,
    damaged or holds another run: the run then trains from the start, its rows up to the checkpoint kept
    and relogged identically."""
    if not os.path.isfile(path):
        log.warning("run %s: checkpoint %s is gone; training from the start", rid, path)
        return None
    try:
        read_checkpoint(path, run_id=rid, step=step)
    except CheckpointError as err:
        log.warning("run %s: %s; training from the start", rid, err)
        return None
    log.info("resuming run %s from its checkpoint at step %d: %s", rid, step, path)
    return CheckpointRef(path, rid, step)


def parent_checkpoint(store: ResultsStore, cfg: DictConfig) -> str | None:
    """The checkpoint file the branch `cfg` starts from (init.parent=RUN_ID@STEP), from `store`'s
    checkpoints table; None for a fresh start. ConfigError (one line) when the store has no run
    RUN_ID, no checkpoint of it at STEP (the line names the steps it has), or the file is gone."""
    parent = parse_parent(cfg.init.parent)
    if parent is None:
        return None
    where = f"init.parent={cfg.init.parent}"
    if store.status(parent.run_id) is None:
        raise ConfigError(f"{where}: the results store {store.location} has no run {parent.run_id} (a run's id: "
                          "run_id in its run.json, or ResultsStore(PATH).runs().run_id)")
    rows = store.checkpoints(parent.run_id)
    found = rows.path[rows.step == parent.step]
    if found.empty:
        steps = ", ".join(str(step) for step in rows.step)
        raise ConfigError(f"{where}: run {parent.run_id} has no stored checkpoint at step {parent.step}; " + (
            f"it has some at steps {steps}" if steps else
            "it has none (a parent saves them at train.checkpoint_steps or every train.checkpoint_every steps)"))
    path = str(found.iloc[0])
    if not os.path.isfile(path):
        raise ConfigError(f"{where}: the checkpoint file {path} of run {parent.run_id} at step {parent.step} is gone")
    return path


def check_parents(store: ResultsStore | None, configs: list[DictConfig]) -> None:
    """Before any run starts or any row is written (`precisionlab train` and `sweep`): every branch
    among the validated `configs` finds its parent's checkpoint in `store`, the file holds that run at
    that step (its checksum verified), and it loads into the branch's model and optimizer. ConfigError
    (one line) otherwise."""
    read, loaded = {}, set()  # the grid points of a sweep often share a parent, and a model
    for cfg in configs:
        if cfg.init.parent is None:
            continue
        if store is None:
            raise ConfigError(f"init.parent={cfg.init.parent}: a branch finds its parent's checkpoint in the results "
                              "store, but store.path is null; set store.path (or store.url) to the parent's store")
        path, parent = parent_checkpoint(store, cfg), parse_parent(cfg.init.parent)
        where = f"init.parent={cfg.init.parent}"
        try:
            if path not in read:
                read[path] = read_checkpoint(path, run_id=parent.run_id, step=parent.step)
            model = (path, repr({k: cfg[k] for k in ("model", "precision", "optim", "seed")}))
            if model not in loaded:
                check_loads(read[path], cfg, where)
                loaded.add(model)
        except CheckpointError as err:
            raise ConfigError(f"{where}: {err}") from None
        except ValueError as err:
            raise ConfigError(str(err)) from None


def open_store(cfg: DictConfig, create: bool = True) -> ResultsStore | None:
    """The results store at cfg.store.url or .path (made absolute by `config.make_paths_absolute`), or None if
    null; created if absent when `create`, else StoreError."""
    location = configured_store(cfg)
    if location is None:
        return None
    return ResultsStore(location, journal_mode=cfg.store.get("journal_mode", DEFAULT_JOURNAL_MODE), create=create)


def train_recorded(cfg: DictConfig, recorder: Any = None) -> RunResult:
    """`precisionlab train`: train `cfg` into the run directory and, unless store.path is null, the store
    (and the trackers of train.loggers).
    Always computes (a run already in the store is replaced: same id, same config). Validates `cfg`
    unless `precisionlab.config.validate` made it."""
    cfg = ensure_valid(cfg)
    store = open_store(cfg)
    if store is None:
        trackers = tracker_recorders(cfg, run_id(cfg), None)
        if trackers:
            recorder = Tee(recorder if recorder is not None else RunDirRecorder("."), *trackers)
        return run(cfg, recorder=recorder, run_id=run_id(cfg))
    result = recorded_run(cfg, store, recorder, force=True)
    if result is None:
        raise busy_error(store, run_id(cfg))
    return result


def busy_error(store: ResultsStore, rid: str) -> StoreError:
    return StoreError(f"results store {store.location}: run {rid} is being trained by another live "
                      "process; wait for it, or set store.path to another file")


def _record_unclaimed_failure(store: ResultsStore | None, cfg: DictConfig, err: Exception) -> None:
    """A job that failed before or at its claim would leave its run `pending`, looking unstarted:
    record it `failed` with the error, where the store can still take a write."""
    if store is None:  # the store itself could not be opened: nothing to record into
        return
    try:
        store.fail_pending(run_id(cfg), f"{type(err).__name__}: {err}")
    except Exception as again:
        log.warning("could not record the failure in the store either: %s", again)


def run_job(cfg: DictConfig) -> str:
    """One grid point: the task of `precisionlab.run.app.sweep_main`. Never raises; returns
    the run's status ("completed", "diverged", "failed") or "skipped"."""
    from hydra.core.hydra_config import HydraConfig

    store = None
    exit_with_parent()  # a joblib worker must not outlive a killed sweep
    try:
        hydra_cfg = HydraConfig.get()
        make_paths_absolute(cfg, hydra_cfg.runtime.cwd)
        with open_dict(cfg):
            if cfg.train.threads is None:  # non-semantic: the run id stays the same
                cfg.train.threads = threads_per_job(hydra_cfg.launcher)
        cfg = assume_valid(cfg)  # plan() validated this grid point before the sweep was launched
        store = open_store(cfg)  # plan() refused a null store: never None here
        sweep = cfg.sweep.name or hydra_cfg.runtime.choices.get("sweep")
        result = recorded_run(cfg, store, sweep=sweep, force=bool(cfg.sweep.force))
        if result is None:
            log.info("skipped run %s: %s in the store", run_id(cfg), store.status(run_id(cfg)))
            return "skipped"
    except Exception as err:  # recorded `failed` by the recorder if the run was claimed; the sweep goes on
        full = disk_full(err)
        if full is not None:  # every later run would fail so too: the sweep stops, the CLI says why in one line
            _record_unclaimed_failure(store, cfg, err)
            raise full from None
        log.exception("run failed")
        _record_unclaimed_failure(store, cfg, err)
        return "failed"
    finally:
        if store is not None:  # one process runs many jobs: keep no connection (2 fds) per finished job
            store.close()
    log.info("run %s %s: %d steps, final train loss %s, val loss %s%s", run_id(cfg), result.status,
             result.steps_done, result.final_train_loss, result.final_val_loss,
             f", error: {result.error}" if result.error else "")
    return result.status
