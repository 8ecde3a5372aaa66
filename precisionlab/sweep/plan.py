"""Planning a sweep: the grid of `precisionlab sweep OVERRIDES...`, before anything runs.

`plan()` expands the grid exactly as Hydra's basic sweeper will (the grid config's
`hydra.sweeper.params`, then the command line, whose `key=a,b` replaces the grid's
values for that key), composes and validates every grid point and finds the store,
so bad input fails with one line before anything is written. `Grid.register` then
records the sweep and its runs (`pending`) in the store.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

from omegaconf import DictConfig

from precisionlab.config import validate
from precisionlab.runtime import absolute_paths
from precisionlab.store import NON_SEMANTIC_KEYS, ResultsStore, parse_store_url, run_id
from precisionlab.store.names import sweep_name_problem
from precisionlab.store.url import configured_store

__all__ = ["Grid", "SweepError", "plan", "CONFIG_MODULE", "CONFIG_NAME"]

CONFIG_MODULE = "precisionlab.configs"
CONFIG_NAME = "sweep"  # configs/sweep.yaml: `train` plus a grid from configs/sweep/
ONE_VALUE_KEYS = ("sweep", "sweep.name", "sweep.force", "store.path", "store.url")  # never swept within one sweep


class SweepError(ValueError):
    """Bad sweep input; the message is one line naming what is wrong and what is accepted."""


@dataclass
class Grid:
    name: str                  # the sweep's name in the store
    config: str                # the grid config, configs/sweep/<config>.yaml
    overrides: list[str]       # the command line's Hydra overrides (launcher ones included)
    params: dict[str, str]     # the grid config's hydra.sweeper.params
    points: list[list[str]]    # every grid point's overrides, in launch order
    configs: list[DictConfig]  # their validated, resolved configs
    run_ids: list[str]         # their run ids (a repeated id is one run)
    store: str                 # the results store's URL (sqlite:////absolute/path or postgresql://...)
    journal_mode: str          # SQLite: how to create it (wal, or delete: a rollback journal)
    force: bool                # rerun completed and diverged runs too
    name_derived: bool         # True: `name` was derived here, so pass it on as sweep.name=...

    @property
    def runs(self) -> list[str]:
        """The distinct run ids, in grid order."""
        return list(dict.fromkeys(self.run_ids))

    def register(self, store: ResultsStore, command: str) -> None:
        """Record the sweep and its runs (`pending` if new) before anything is launched. The runs
        first: that one transaction creates the sweep with all its runs, so a reader (a report
        meanwhile) never sees the sweep without them; its command and grid follow."""
        store.register_runs(self.configs, sweep=self.name)
        store.add_sweep(self.name, command=command, grid={
            "config": self.config, "params": self.params, "overrides": self.overrides, "runs": len(self.runs)})


def _changes_runs(key: str) -> bool:
    """Whether an override of `key` can change what the runs compute (not hydra.*, sweep.*, store.*, threads ...)."""
    parts = key.lstrip("+~").replace("/", ".").split(".")
    return not (parts[0] == "hydra" or ".".join(parts) in NON_SEMANTIC_KEYS
                or any(part in NON_SEMANTIC_KEYS for part in parts))


def plan(overrides: Sequence[str], cwd: str | os.PathLike | None = None) -> Grid:
    """Expand, compose and validate the grid of `precisionlab sweep OVERRIDES`; write nothing.

    Raises SweepError, ConfigError / DataError, or Hydra's override and
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
        launcher = base.hydra.launcher
        if "joblib" in str(launcher.get("_target_", "")):
            jobs = launcher.get("n_jobs")
            if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs == 0:
                raise SweepError(f"hydra.launcher.n_jobs must be a non-zero integer (N runs at once; -1: all "
                                 f"cores, -2: all but one, ...); got {jobs!r}")
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
            configs.append(validate(cfg))
    store = configured_store(base)
    journal_mode = base.store.get("journal_mode", "wal") if "store" in base else "wal"
    if store is None:
        raise SweepError("store.path is null: a sweep records its runs in a results store; "
                         "set store.path=FILE (default results/precisionlab.db) or store.url=URL")
    ids = [run_id(c) for c in configs]
    name, derived = base.sweep.name, base.sweep.name is None
    if derived:
        name = base.hydra.runtime.choices.get("sweep") or "sweep"
        if any(_changes_runs(o.get_key_element()) for o in given):
            name += "-" + hashlib.sha256(" ".join(sorted(set(ids))).encode()).hexdigest()[:6]
    problem = sweep_name_problem(str(name))  # the name becomes a folder name: reports/NAME
    if problem:
        raise SweepError(f"sweep.name: {problem}")
    return Grid(name=str(name), config=str(base.hydra.runtime.choices.get("sweep")), overrides=overrides,
                params=params, points=points, configs=configs, run_ids=ids,
                store=parse_store_url(str(store), cwd).url, journal_mode=str(journal_mode),
                force=bool(base.sweep.force), name_derived=derived)
