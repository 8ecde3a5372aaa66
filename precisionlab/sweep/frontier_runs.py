"""`precisionlab frontier`'s runs: the search's rounds (precisionlab.sweep.frontier) as small sweeps.

Each round is the grid {reference, width} x seeds 0..n-1 at one LR, planned by `sweep.plan.plan` from
the same overrides `precisionlab sweep` takes, linked to the frontier's sweep in the results store and
launched through the same Hydra multirun (the CLI passes `launch`): a run is identified by its config
alone (the sweep's name is not part of a run id), so a run that any sweep already completed or saw
diverge, in this store, is reused and never trained again. Before the search starts, every (width,
seed) the search could ask for is looked up in the store (`known`): the search trains none of them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

from omegaconf import DictConfig, open_dict, read_write

from precisionlab.store import DONE, ResultsStore, run_id
from precisionlab.sweep.frontier import Axis, FrontierError
from precisionlab.sweep.plan import Grid, plan
from precisionlab.sweep.progress import Progress, complete

__all__ = ["FrontierRuns", "RESERVED_KEYS", "check_overrides"]

# What the frontier sets itself in every run: never passed through.
RESERVED_KEYS = ("seed", "optim.lr", "precision.format", "precision.x", "precision.w", "precision.grad",
                 "sweep", "sweep.name", "sweep.force")


def check_overrides(overrides: Sequence[str]) -> None:
    """The pass-through overrides set one value per key and none of RESERVED_KEYS. FrontierError."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.get_key_element().lstrip("+~")
        if key in RESERVED_KEYS:
            raise FrontierError(f"{override.input_line}: the frontier search sets {key} itself (use --reference, "
                                f"--axis, --widths, --lr, --seeds, --max-seeds, --name); pass other overrides")
        if override.is_sweep_override():
            raise FrontierError(f"{override.input_line}: the frontier search takes one value per key; it chooses "
                                "the formats and seeds itself")


class FrontierRuns:
    """The search's `run` callable over a results store. Plans the whole axis once (bad input fails here,
    before anything is written); `known()` is what the store already has."""

    def __init__(self, axis: Axis, lr: str, overrides: Sequence[str], name: str, max_seeds: int):
        self.axis, self.name, self.max_seeds = axis, name, max_seeds
        self.base = [*overrides, f"sweep.name={name}", f"optim.lr={lr}"]
        self.widths = [axis.reference, *axis.widths]
        whole = self._plan(self.widths, [0])  # validates every format's config; seeds change only the seed
        self.store_url, self.journal_mode = whole.store, whole.journal_mode
        self.configs: dict[int, DictConfig] = dict(zip(self.widths, whole.configs))
        self.store: ResultsStore | None = None

    def _plan(self, widths: Sequence[int], seeds: Sequence[int]) -> Grid:
        return plan([*self.base, f"precision.format={','.join(self.axis.format(w) for w in widths)}",
                     f"seed={','.join(map(str, seeds))}"])

    def run_id(self, width: int, seed: int) -> str:
        cfg = copy.deepcopy(self.configs[width])
        with read_write(cfg), open_dict(cfg):  # a validated config is read-only
            cfg.seed = seed
        return run_id(cfg)

    def open(self, command: str, description: dict) -> None:
        """Open (create) the store and record the frontier's sweep."""
        self.store = ResultsStore(self.store_url, journal_mode=self.journal_mode)
        self.store.add_sweep(self.name, command=command, grid=description)

    def _results(self, pairs: Sequence[tuple[int, int]]) -> dict[int, dict[int, float]]:
        """Final validation losses of the pairs' finished runs (math.inf: diverged); others left out."""
        runs = self.store.runs(status=list(DONE))
        found = {rid: (status, loss) for rid, status, loss in zip(runs.run_id, runs.status, runs.final_val_loss)}
        out: dict[int, dict[int, float]] = {}
        for width, seed in pairs:
            status, loss = found.get(self.run_id(width, seed), (None, None))
            if status is None:
                continue
            loss = float("nan") if loss is None else float(loss)
            out.setdefault(width, {})[seed] = loss if status == "completed" and math.isfinite(loss) else math.inf
        return out

    def known(self) -> dict[int, dict[int, float]]:
        """Every (width, seed < max_seeds) the store has a finished run of."""
        return self._results([(w, s) for w in self.widths for s in range(self.max_seeds)])

    def __call__(self, request: dict[int, list[int]], launch: Callable[[Grid], None]) -> dict[int, dict[int, float]]:
        """Link the request's runs to the sweep, train those the store has not finished, return all results."""
        by_seeds: dict[tuple[int, ...], list[int]] = {}
        for width, seeds in request.items():
            by_seeds.setdefault(tuple(seeds), []).append(width)
        for seeds, widths in by_seeds.items():
            grid = self._plan(widths, seeds)
            expected = {self.run_id(w, s) for w in widths for s in seeds}
            if set(grid.runs) != expected:  # the known runs were looked up under these ids
                raise RuntimeError(f"frontier: planned run ids {sorted(grid.runs)} differ from {sorted(expected)}")
            self.store.register_runs(grid.configs, sweep=self.name)
            runs = self.store.runs(sweep=self.name)
            done = set(runs.run_id[runs.status.isin(DONE)])
            if set(grid.runs) - done:
                with Progress(self.store, grid):
                    complete(self.store, grid, lambda: launch(grid))
        return self._results([(w, s) for w, seeds in request.items() for s in seeds])

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
