"""Sweeps: a grid of training runs as one Hydra multirun, recorded in the results store.

`precisionlab sweep OVERRIDES...` (precisionlab.cli) works in two places.

The command's own process:
  plan()     expands the grid exactly as Hydra's basic sweeper will (the grid
             config's `hydra.sweeper.params`, then the command line, whose
             `key=a,b` replaces the grid's values for that key), composes and
             validates every grid point and finds the store, so bad input fails
             with one line before anything is written;
  then the sweep and its runs are registered (`pending`), the module-level
  `precisionlab.app.sweep_main` runs with `-m` under the chosen launcher
  (basic: one run after the other; joblib: local processes; submitit: Slurm;
  ray), `Progress` polls the store, which sees runs finish in any process, and
  `summary()` counts the outcomes.

Each grid point, in whatever process the launcher picked (`run_job`):
  claims its run in the store (skip: completed or diverged, unless forced, or
  running in a live process elsewhere), resumes from the run's last checkpoint
  when an earlier attempt was killed or failed, trains with the store and the
  run directory as recorders, and never raises: a run that raises is recorded
  `failed` with its error and the sweep goes on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf, open_dict

from precisionlab import train
from precisionlab.report import by_lr, display_by_lr, label_runs, text_table
from precisionlab.rundir import RunDirRecorder
from precisionlab.store import DEFAULT_STORE_PATH, DONE, NON_SEMANTIC_KEYS, OUTCOMES, ResultsStore, StoreError, run_id

__all__ = ["Grid", "SweepError", "plan", "run_job", "recorded_run", "train_recorded", "Progress", "summary",
           "threads_per_job", "Tee"]

log = logging.getLogger(__name__)

CONFIG_MODULE = "precisionlab.configs"
CONFIG_NAME = "sweep"  # configs/sweep.yaml: `train` plus a grid from configs/sweep/
ONE_VALUE_KEYS = ("sweep", "sweep.name", "sweep.force", "store.path")  # never swept within one sweep


class SweepError(ValueError):
    """Bad sweep input; the message is one line naming what is wrong and what is accepted."""


# --------------------------------------------------------------------------- planning (the parent)


@dataclass
class Grid:
    name: str                  # the sweep's name in the store
    config: str                # the grid config, configs/sweep/<config>.yaml
    overrides: list[str]       # the command line's Hydra overrides (launcher ones included)
    params: dict[str, str]     # the grid config's hydra.sweeper.params
    points: list[list[str]]    # every grid point's overrides, in launch order
    configs: list[DictConfig]  # their validated, resolved configs
    run_ids: list[str]         # their run ids (a repeated id is one run)
    store_path: str            # absolute path of the results store
    journal_mode: str          # how to create it: wal (one machine) or delete (nodes sharing a file system)
    force: bool                # rerun completed and diverged runs too
    name_derived: bool         # True: `name` was derived here, so pass it on as sweep.name=...

    @property
    def runs(self) -> list[str]:
        """The distinct run ids, in grid order."""
        return list(dict.fromkeys(self.run_ids))

    def register(self, store: ResultsStore, command: str) -> None:
        """Record the sweep and its runs (`pending` if new) before anything is launched."""
        store.add_sweep(self.name, command=command, grid={
            "config": self.config, "params": self.params, "overrides": self.overrides, "runs": len(self.runs)})
        store.register_runs(self.configs, sweep=self.name)


def absolute_paths(cfg: DictConfig, base: str | os.PathLike) -> None:
    """Make data.path, data.cache_dir and store.path absolute, taken from `base` (the launch directory), in place.
    Same rule as hydra.utils.to_absolute_path, so a run's id does not depend on where it was launched from."""
    with open_dict(cfg):
        for node, key in ((cfg.get("data"), "path"), (cfg.get("data"), "cache_dir"), (cfg.get("store"), "path")):
            if node is not None and key in node and not OmegaConf.is_missing(node, key) and node[key] is not None:
                value = os.path.expanduser(str(node[key])) if node is cfg.get("store") else str(node[key])
                node[key] = str(Path(base) / value)


def _changes_runs(key: str) -> bool:
    """Whether an override of `key` can change what the runs compute (not hydra.*, sweep.*, store.*, threads ...)."""
    parts = key.lstrip("+~").replace("/", ".").split(".")
    return not (parts[0] == "hydra" or ".".join(parts) in NON_SEMANTIC_KEYS
                or any(part in NON_SEMANTIC_KEYS for part in parts))


def plan(overrides: Sequence[str], cwd: str | os.PathLike | None = None) -> Grid:
    """Expand, compose and validate the grid of `precisionlab sweep OVERRIDES`; write nothing.

    Raises SweepError, train.ConfigError / DataError, or Hydra's override and
    composition errors (the caller turns them into one line)."""
    from hydra import compose, initialize_config_module
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cwd = str(cwd or os.getcwd())
    overrides = list(overrides)
    parser = OverridesParser.create()
    given = parser.parse_overrides(overrides)
    for override in given:
        if override.is_sweep_override() and override.get_key_element() in ONE_VALUE_KEYS:
            raise SweepError(f"{override.get_key_element()} takes one value per sweep, got "
                             f"{override.input_line}; run one sweep for each value")
    fixed = [o.input_line for o in given if not o.is_sweep_override()]
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        base = compose(config_name=CONFIG_NAME, overrides=fixed, return_hydra_config=True)
        if not str(base.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
            raise SweepError(f"precisionlab sweep runs grids with Hydra's basic sweeper; got "
                             f"hydra/sweeper={base.hydra.runtime.choices.get('hydra/sweeper')}")
        params = {str(k): str(v) for k, v in (base.hydra.sweeper.params or {}).items()}
        # What BasicSweeper.sweep does: the grid config's params first, the command line after.
        grid = parser.parse_overrides([f"{k}={v}" for k, v in params.items()] + overrides)
        for override in grid:
            if override.is_sweep_override() and override.is_discrete_sweep() and not list(override.sweep_string_iterator()):
                raise SweepError(f"the grid is empty: {override.input_line} gives no values; "
                                 "give every swept key at least one value (e.g. seed=0,1 or seed=range(3))")
        (points,) = BasicSweeper.split_arguments(grid, None)
        configs = []
        for point in points:
            cfg = compose(config_name=CONFIG_NAME, overrides=point)
            absolute_paths(cfg, cwd)
            configs.append(train.validate(cfg))
    store_path = base.store.path if "store" in base else None
    journal_mode = base.store.get("journal_mode", "wal") if "store" in base else "wal"
    if store_path is None:
        raise SweepError("store.path is null: a sweep records its runs in a results store; "
                         "set store.path=FILE (default results/precisionlab.db)")
    ids = [run_id(c) for c in configs]
    name, derived = base.sweep.name, base.sweep.name is None
    if derived:
        name = base.hydra.runtime.choices.get("sweep") or "sweep"
        if any(_changes_runs(o.get_key_element()) for o in given):
            name += "-" + hashlib.sha256(" ".join(sorted(set(ids))).encode()).hexdigest()[:6]
    return Grid(name=str(name), config=str(base.hydra.runtime.choices.get("sweep")), overrides=overrides,
                params=params, points=points, configs=configs, run_ids=ids,
                store_path=str(Path(cwd) / os.path.expanduser(str(store_path))), journal_mode=str(journal_mode),
                force=bool(base.sweep.force), name_derived=derived)


# --------------------------------------------------------------------------- one run (any process)


class Tee:
    """A `Recorder` handing every call to several recorders (the store, the run directory, ...);
    `extra_meta` is added to what `start` receives."""

    def __init__(self, *recorders: Any, extra_meta: Mapping[str, Any] | None = None):
        self.recorders = [r for r in recorders if r is not None]
        self.extra_meta = dict(extra_meta or {})

    def start(self, meta):
        for r in self.recorders:
            r.start({**meta, **self.extra_meta})

    def log(self, step, split, metrics):
        for r in self.recorders:
            r.log(step, split, metrics)

    def checkpoint(self, step, path):
        for r in self.recorders:
            r.checkpoint(step, path)

    def sharpness(self, step, metric, value, params):
        for r in self.recorders:
            hook = getattr(r, "sharpness", None)  # optional in the Recorder protocol
            if hook is not None:
                hook(step, metric, value, params)

    def finish(self, outcome):
        for r in self.recorders:
            r.finish(outcome)


def recorded_run(cfg: DictConfig, store: ResultsStore, recorder: Any = None, *, sweep: str | None = None,
                 force: bool = False) -> train.RunResult | None:
    """Train the validated `cfg` into `store` (and `recorder`, default: the run directory "."),
    resuming from the run's last recorded checkpoint; None when the store says not to
    (completed or diverged and not `force`, or running in a live process elsewhere)."""
    rid = run_id(cfg)
    if not store.claim_run(rid, cfg, sweep, force=force):
        return None
    # Everything after the claim happens inside the recorder: leaving it without an outcome records `failed`.
    with store.recorder(rid) as rec:
        checkpoint = store.latest_checkpoint(rid)
        resume_from = None
        if checkpoint is not None:
            if os.path.isfile(checkpoint[1]):
                resume_from = checkpoint[1]
                log.info("resuming run %s from its checkpoint at step %d: %s", rid, *checkpoint)
            else:  # rows up to the checkpoint are kept and relogged identically from step 1
                log.warning("run %s: checkpoint %s is gone; training from step 1", rid, checkpoint[1])
        tee = Tee(rec, recorder if recorder is not None else RunDirRecorder("."),
                  extra_meta={"run_id": rid, "run_dir": os.getcwd(),
                              "threads": cfg.train.threads or os.cpu_count() or 1})  # as train.run sets them
        return train.run(cfg, recorder=tee, resume_from=resume_from)


def open_store(cfg: DictConfig) -> ResultsStore | None:
    """The results store at cfg.store.path (relative paths: from the launch directory), or None if null."""
    from hydra.utils import to_absolute_path

    path = cfg.store.path if "store" in cfg else None
    if path is None:
        return None
    return ResultsStore(to_absolute_path(os.path.expanduser(str(path))), journal_mode=cfg.store.get("journal_mode", "wal"))


def train_recorded(cfg: DictConfig, recorder: Any = None) -> train.RunResult:
    """`precisionlab train`: train `cfg` into the run directory and, unless store.path is null, the store.
    Always computes (a run already in the store is replaced: same id, same config)."""
    cfg = train.validate(cfg)
    store = open_store(cfg)
    if store is None:
        return train.run(cfg, recorder=recorder)
    result = recorded_run(cfg, store, recorder, force=True)
    if result is None:
        raise StoreError(f"results store {store.path}: run {run_id(cfg)} is being trained by another live "
                         "process; wait for it, or set store.path to another file")
    return result


def threads_per_job(launcher: Mapping[str, Any]) -> int:
    """Torch threads for one job, so jobs sharing a machine do not oversubscribe it:
    joblib: the cores this process may use / n_jobs; Ray: the job's ray.remote.num_cpus;
    submitit: its cpus_per_task; otherwise all the cores this process may use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    target = str(launcher.get("_target_", ""))
    if "joblib" in target:
        jobs = int(launcher.get("n_jobs") or 1)
        if jobs < 0:  # joblib: -1 all cores, -2 all but one, ...
            jobs = max(1, cores + 1 + jobs)
        return max(1, cores // jobs)
    cpus = None
    if "ray" in target:
        cpus = ((launcher.get("ray") or {}).get("remote") or {}).get("num_cpus")
    elif "submitit" in target:
        cpus = launcher.get("cpus_per_task")
    return max(1, min(cores, int(cpus))) if cpus else cores


def run_job(cfg: DictConfig) -> str:
    """One grid point: the task of `precisionlab.app.sweep_main`. Never raises; returns
    the run's status ("completed", "diverged", "failed") or "skipped"."""
    from hydra.core.hydra_config import HydraConfig

    store = None
    try:
        hydra_cfg = HydraConfig.get()
        absolute_paths(cfg, hydra_cfg.runtime.cwd)
        with open_dict(cfg):
            if cfg.train.threads is None:  # non-semantic: the run id stays the same
                cfg.train.threads = threads_per_job(hydra_cfg.launcher)
        cfg = train.validate(cfg)
        store = ResultsStore(cfg.store.path)
        sweep = cfg.sweep.name or hydra_cfg.runtime.choices.get("sweep")
        result = recorded_run(cfg, store, sweep=sweep, force=bool(cfg.sweep.force))
        if result is None:
            log.info("skipped run %s: %s in the store", run_id(cfg), store.status(run_id(cfg)))
            return "skipped"
    except Exception:  # recorded `failed` by the recorder if the run was claimed; the sweep goes on
        log.exception("run failed")
        return "failed"
    finally:
        if store is not None:  # one process runs many jobs: keep no connection (2 fds) per finished job
            store.close()
    log.info("run %s %s: %d steps, final train loss %s, val loss %s%s", run_id(cfg), result.status,
             result.steps_done, result.final_train_loss, result.final_val_loss,
             f", error: {result.error}" if result.error else "")
    return result.status


# --------------------------------------------------------------------------- progress and summary (the parent)


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


class Progress:
    """Runs done / total, diverged and failed so far, ETA, while a sweep runs.

    A thread polls the store every `interval` seconds, so it sees runs finish in
    any process or machine the launcher uses. On a terminal: a tqdm bar on
    stderr; otherwise (logs, CI): one line on stderr whenever the count changes.
    Runs already done when the sweep starts count as done; the ETA is taken from
    the runs finished since."""

    def __init__(self, store: ResultsStore, grid: Grid, *, interval: float = 1.0, stream=None):
        self.store, self.grid, self.interval = store, grid, interval
        self.stream = stream or sys.stderr
        self.ids = set(grid.runs)
        self.t0 = time.time()
        runs = self._runs()
        self.skipped = set() if grid.force else set(runs.run_id[runs.status.isin(DONE)])
        self.total = len(self.ids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sweep-progress", daemon=True)
        self._shown: tuple | None = None
        self._bar = None

    def _runs(self) -> pd.DataFrame:
        runs = self.store.runs(sweep=self.grid.name)
        return runs[runs.run_id.isin(self.ids)]

    def counts(self) -> dict[str, Any]:
        """done, diverged, failed (among done), finished (since start), eta (seconds or None)."""
        runs = self._runs()
        t0 = pd.Timestamp(self.t0, unit="s", tz="UTC")
        fresh = runs.status.isin(OUTCOMES) & (runs.finished >= t0)
        done = runs[fresh | runs.run_id.isin(self.skipped)]
        finished = int(fresh.sum())
        elapsed = time.time() - self.t0
        eta = 0.0 if len(done) == self.total else elapsed / finished * (self.total - len(done)) if finished else None
        return {"done": len(done), "diverged": int((done.status == "diverged").sum()),
                "failed": int((done.status == "failed").sum()), "finished": finished, "eta": eta}

    def _show(self) -> None:
        try:
            c = self.counts()
        except Exception:  # a store busy for longer than its timeout only delays the display
            return
        if self._bar is not None:
            self._bar.set_postfix(diverged=c["diverged"], failed=c["failed"], refresh=False)
            self._bar.update(c["done"] - self._bar.n)
            return
        state = (c["done"], c["diverged"], c["failed"])
        if state != self._shown:
            self._shown = state
            print(f"sweep {self.grid.name}: {c['done']}/{self.total} runs done, {c['diverged']} diverged, "
                  f"{c['failed']} failed, ETA {_eta(c['eta'])}", file=self.stream, flush=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._show()

    def __enter__(self) -> "Progress":
        to_run = self.total - len(self.skipped)
        print(f"sweep {self.grid.name}: {self.total} runs, {len(self.skipped)} already done, {to_run} to run; "
              f"store {self.store.path}", file=self.stream, flush=True)
        if self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=len(self.skipped), unit="run", desc=f"sweep {self.grid.name}",
                             file=self.stream, dynamic_ncols=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._show()
        if self._bar is not None:
            self._bar.close()


def summary(store: ResultsStore, grid: Grid) -> tuple[str, dict[str, int]]:
    """The end-of-sweep lines (results per format x LR, counts by status, the report command) and the counts."""
    runs = store.runs(sweep=grid.name)
    runs = runs[runs.run_id.isin(set(grid.runs))]
    statuses = runs.status.value_counts()
    counts = {s: int(statuses.get(s, 0)) for s in ("completed", "diverged", "failed", "running", "pending")}
    line = (f"sweep {grid.name}: {len(grid.runs)} runs: {counts['completed']} completed, "
            f"{counts['diverged']} diverged, {counts['failed']} failed")
    if counts["running"] + counts["pending"]:
        line += f", {counts['running'] + counts['pending']} not finished (running in another process?)"
    table = text_table(display_by_lr(by_lr(label_runs(runs)))) if len(runs) else "(no runs)"
    command = f"precisionlab report --sweep {grid.name}"
    if grid.store_path != os.path.abspath(DEFAULT_STORE_PATH):
        command += f" --store {grid.store_path}"
    return f"{table}\n{line}\nsee the report (tables, plots, HTML): {command}", counts
