"""Planning a sweep: the grid of `precisionlab sweep OVERRIDES...`, before anything runs.

The grid is what was typed:
  - no axis on the command line (no `key=a,b`): the grid config's axes (`sweep=default`
    unless `sweep=NAME` is given), a command-line `key=value` replacing that key's values;
  - axes on the command line and no `sweep=NAME`: exactly those axes; the grid config
    (`default`) still gives its settings (tiny model, masked precision, checkpoints);
  - `sweep=NAME` and axes: NAME's axes with the command line's keys replaced.
An axis of the grid config that would change part of a preset the command line chooses
(`precision.format` of `sweep=default` under `precision=nvfp4`) is left out and noted: a
preset typed on the command line is never changed by an axis that was not typed. Two
warnings: a key typed inside a preset the grid chooses by name (`precision=fp8
precision.format=...`: those runs are that preset changed), and grid points that are one
run (same run id).

`plan()` expands that grid as Hydra's basic sweeper will (`launch_overrides`: the kept
axes of the grid config, then the command line, with the grid config's own
`hydra.sweeper.params` switched off), composes and validates every grid point and finds
the store, so bad input fails with one line before anything is written. `Grid.register`
then records the sweep and its runs (`pending`) in the store.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from omegaconf import DictConfig

from precisionlab.config import make_paths_absolute, validate
from precisionlab.store import NON_SEMANTIC_KEYS, ResultsStore, parse_store_url, run_id
from precisionlab.store.names import sweep_name_problem
from precisionlab.store.url import DEFAULT_JOURNAL_MODE, DEFAULT_STORE_PATH, configured_store

__all__ = ["Grid", "SweepError", "plan", "CONFIG_MODULE", "CONFIG_NAME", "GROUPS"]

CONFIG_MODULE = "precisionlab.configs"
CONFIG_NAME = "sweep"  # configs/sweep.yaml: `train` plus a grid from configs/sweep/
ONE_VALUE_KEYS = ("sweep", "sweep.name", "sweep.force", "store.path", "store.url")  # never swept within one sweep
GROUPS = ("model", "optim", "precision", "data")  # config groups whose options are presets


class SweepError(ValueError):
    """Bad sweep input; the message is one line naming what is wrong and what is accepted."""


@dataclass
class Grid:
    name: str                  # the sweep's name in the store
    config: str                # the grid config, configs/sweep/<config>.yaml
    overrides: list[str]       # the command line's Hydra overrides (launcher ones included)
    params: dict[str, str]     # the grid's axes: key -> values as given (grid config's kept, then typed)
    sources: dict[str, str]    # where each axis comes from: "command line" or "sweep=NAME"
    points: list[list[str]]    # every grid point's overrides, in launch order
    configs: list[DictConfig]  # their validated, resolved configs
    run_ids: list[str]         # their run ids (a repeated id is one run)
    store: str                 # the results store's URL (sqlite:////absolute/path or postgresql://...)
    journal_mode: str          # SQLite: how to create it (wal, or delete: a rollback journal)
    force: bool                # rerun completed and diverged runs too
    name_derived: bool         # True: `name` was derived here, so pass it on as sweep.name=...
    launch_overrides: list[str] = field(default_factory=list)  # what Hydra's multirun gets: exactly these points
    notes: list[str] = field(default_factory=list)     # grid config axes left out, and why (one line each)
    warnings: list[str] = field(default_factory=list)  # a changed preset, grid points that are one run

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
        # the sweep's own settings first: a bad one is reported before the grid's runs are composed
        store = configured_store(base)
        if store is None:
            raise SweepError("store.path is null: a sweep records its runs in a results store; "
                             f"set store.path=FILE (default {DEFAULT_STORE_PATH}) or store.url=URL")
        store_url = parse_store_url(str(store), cwd).url
        if base.sweep.name is not None and (problem := sweep_name_problem(str(base.sweep.name))):
            raise SweepError(f"sweep.name: {problem}")  # the name becomes a folder name: reports/NAME
        config_params = {str(k): str(v) for k, v in (base.hydra.sweeper.params or {}).items()}
        config_name = f"sweep={base.hydra.runtime.choices.get('sweep')}"
        kept, notes = _kept_axes(config_params, given, config_name)
        launch = [f"{k}={v}" for k, v in kept.items()] + overrides  # what BasicSweeper.sweep does, without the dropped axes
        grid = parser.parse_overrides(launch)
        for override in grid:
            if override.is_sweep_override() and override.is_discrete_sweep() and not list(override.sweep_string_iterator()):
                raise SweepError(f"the grid is empty: {override.input_line} gives no values; "
                                 "give every swept key at least one value (e.g. seed=0,1 or seed=range(3))")
        (points,) = BasicSweeper.split_arguments(grid, None)
        configs = []
        for point in points:
            cfg = compose(config_name=CONFIG_NAME, overrides=point)
            make_paths_absolute(cfg, cwd)
            configs.append(validate(cfg))
    typed = {o.get_key_element(): o for o in given}
    params, sources = {}, {}
    for override in grid:  # the axes: the kept grid config's, then the command line's
        key = override.get_key_element()
        if key in kept or override.is_sweep_override():
            params[key] = (",".join(override.sweep_string_iterator()) if override.is_sweep_override()
                           else override.get_value_element_as_str())
            sources[key] = "command line" if key in typed else config_name
    journal_mode = base.store.get("journal_mode", DEFAULT_JOURNAL_MODE) if "store" in base else DEFAULT_JOURNAL_MODE
    ids = [run_id(c) for c in configs]
    name, derived = base.sweep.name, base.sweep.name is None
    if derived:
        name = base.hydra.runtime.choices.get("sweep") or "sweep"
        if any(_changes_runs(o.get_key_element()) for o in given):
            name += "-" + hashlib.sha256(" ".join(sorted(set(ids))).encode()).hexdigest()[:6]
    problem = sweep_name_problem(str(name))  # a derived name (a given one was checked above)
    if problem:
        raise SweepError(f"sweep.name: {problem}")
    warnings = _changed_presets(given, kept, config_name) + _collapsed(points, ids)
    return Grid(name=str(name), config=str(base.hydra.runtime.choices.get("sweep")), overrides=overrides,
                params=params, sources=sources, points=points, configs=configs, run_ids=ids,
                store=store_url, journal_mode=str(journal_mode),
                force=bool(base.sweep.force), name_derived=derived,
                launch_overrides=["hydra.sweeper.params=null", *launch], notes=notes, warnings=warnings)


def _group(key: str) -> str | None:
    """The preset group a key lies inside (precision.format -> precision), or None."""
    head = key.lstrip("+~").split(".", 1)
    return head[0] if len(head) == 2 and head[0] in GROUPS else None


def _kept_axes(params: dict[str, str], given, config_name: str) -> tuple[dict[str, str], list[str]]:
    """The grid config's axes that stay in the grid, and a note for each group of those left out.

    Axes typed on the command line without `sweep=NAME`: none stay (the grid is what was typed).
    Otherwise all stay (a typed key replaces that axis's values), except an axis inside a preset
    group that the command line chooses (`precision.format` under `precision=bf16,nvfp4`)."""
    keys = {o.get_key_element() for o in given}
    typed_axes = [o.input_line for o in given if o.is_sweep_override() and not o.get_key_element().startswith("hydra")]
    if typed_axes and "sweep" not in keys:
        left = [k for k in params if k not in keys]
        notes = [f"the grid is the command line's axes ({' '.join(typed_axes)}); {config_name}'s own axes "
                 f"{', '.join(left)} are left out (add {config_name} to the command line to keep them)"] if left else []
        return {}, notes
    chosen = {o.get_key_element(): o.input_line for o in given if o.get_key_element() in GROUPS}
    kept, notes = {}, []
    for key, values in params.items():
        group = _group(key)
        if group in chosen and key not in keys:
            notes.append(f"{config_name}'s axis {key}={values} is left out: {chosen[group]} on the command line "
                         f"chooses whole presets, which {key} would change")
        else:
            kept[key] = values
    return kept, notes


def _changed_presets(given, kept: dict[str, str], config_name: str) -> list[str]:
    """One warning per key typed inside a preset the grid chooses by name (on the command line or
    as an axis of the grid config): those runs are the preset changed."""
    chosen = {o.get_key_element(): o.input_line for o in given if o.get_key_element() in GROUPS}
    chosen.update({k: f"{k}={v} (an axis of {config_name})" for k, v in kept.items() if k in GROUPS and k not in chosen})
    warnings = []
    for override in given:
        group = _group(override.get_key_element())
        if group in chosen:
            part = override.get_key_element().lstrip("+~").split(".", 1)[1]
            warnings.append(f"{override.input_line} overrides part of the preset {chosen[group]}: those runs are not "
                            f"the preset; their labels say so (PRESET+{part}=VALUE)")
    return warnings


def _collapsed(points: list[list[str]], ids: list[str]) -> list[str]:
    """One warning when grid points are one run (the same run id): it names the first such pair's
    differing overrides, which change nothing the run computes."""
    first: dict[str, int] = {}
    for j, rid in enumerate(ids):
        if rid in first:
            i = first[rid]
            a = " ".join(o for o in points[i] if o not in points[j])
            b = " ".join(o for o in points[j] if o not in points[i])
            what = (f"grid points {a} and {b} are one run ({rid}): they train the same config" if a or b else
                    f"grid point {' '.join(points[i])} comes twice (a value given twice?)")
            return [f"{what}; {len(ids)} grid points give {len(set(ids))} runs"]
        first[rid] = j
    return []
