"""The Hydra entry points: module-level `@hydra.main` functions around `precisionlab.train.loop.run`.

`precisionlab train OVERRIDES...` (precisionlab.cli) calls `train_main()` with
the overrides in sys.argv. Hydra makes the run directory the working
directory (`hydra.job.chdir: true`), where the run writes metrics.csv,
run.json and checkpoints/; relative data paths are taken from the directory
the command was started in.

Validation: the CLI validates before it launches Hydra (bad input must fail before Hydra
writes a run directory), and Hydra composes the same config again for the task function.
`precisionlab train` hands its validated config over (`validated_by_cli`), so `train_main`
checks nothing again; called any other way, `train_main` validates. `sweep_main` runs grid points `precisionlab sweep` validated in
`sweep.plan.plan`, possibly in other processes: it takes their validity on trust
(`precisionlab.config.assume_valid`).
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from tqdm import tqdm

from precisionlab.config import ConfigError, make_paths_absolute, validate
from precisionlab.store import StoreError
from precisionlab.run.job import run_job, train_recorded
from precisionlab.train.data import DataError
from precisionlab.train.outcomes import RunResult
from precisionlab.train.rundir import RunDirRecorder

__all__ = ["train_main", "sweep_main", "describe", "validated_by_cli"]


class _ProgressRecorder(RunDirRecorder):
    """Run-directory recorder that also drives a progress bar on stderr."""

    def __init__(self, total: int):
        super().__init__(".")
        # disable=None: no bar when stderr is not a terminal (sweep workers, CI logs)
        self.bar = tqdm(total=total, file=sys.stderr, unit="step", dynamic_ncols=True, leave=False, disable=None)

    def log(self, step, split, metrics):
        super().log(step, split, metrics)
        if split == "train":
            self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
            self.bar.update(step - self.bar.n)

    def finish(self, outcome):
        self.bar.close()
        super().finish(outcome)


def describe(result: RunResult) -> str:
    """The final line: outcome, steps and losses."""
    def fmt(v):
        return "n/a" if v is None else ("nan" if math.isnan(v) else f"{v:.4f}")

    head = {"completed": "completed", "diverged": f"diverged at step {result.diverged_step}", "failed": "failed"}[result.status]
    line = f"{head}: {result.steps_done} steps, final train loss {fmt(result.final_train_loss)}, val loss {fmt(result.final_val_loss)}, spikes {result.spikes}"
    return f"{line}; error: {result.error}" if result.error else line


_validated: DictConfig | None = None  # what `precisionlab train` validated, while it runs train_main


@contextmanager
def validated_by_cli(cfg: DictConfig) -> Iterator[None]:
    """Within: `train_main`'s config is `cfg`, composed from the same overrides and validated."""
    global _validated
    _validated = cfg
    try:
        yield
    finally:
        _validated = None


@hydra.main(config_path="pkg://precisionlab.configs", config_name="train", version_base="1.3")
def train_main(cfg: DictConfig) -> RunResult:
    make_paths_absolute(cfg, HydraConfig.get().runtime.cwd)  # the launch directory, not the run directory
    try:
        cfg = _validated if _validated is not None else validate(cfg)
        result = train_recorded(cfg, _ProgressRecorder(cfg.train.steps))  # run directory + results store
    except (ConfigError, DataError, StoreError) as err:
        _remove_unused_run_dir()
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(describe(result))
    if result.status == "failed":
        sys.exit(1)
    return result


def _remove_unused_run_dir() -> None:
    """Refused before training (e.g. another live `train` of the same run claimed it first): the run
    directory Hydra made holds only Hydra's own files, so it goes, with the date folder it leaves empty."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    own = {".hydra", f"{hydra_cfg.job.name}.log"}
    if not run_dir.is_dir() or not {p.name for p in run_dir.iterdir()} <= own:
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    launch = Path(hydra_cfg.runtime.cwd).resolve()
    for folder in run_dir.resolve().parents:  # outputs/DATE, outputs: while empty and inside the launch folder
        if folder == launch or not folder.is_relative_to(launch):
            break
        try:
            folder.rmdir()
        except OSError:  # not empty
            break
    os.chdir(launch)


@hydra.main(config_path="pkg://precisionlab.configs", config_name="sweep", version_base="1.3")
def sweep_main(cfg: DictConfig) -> str:
    """One grid point of `precisionlab sweep` (run with -m); see precisionlab.run.job.run_job."""
    return run_job(cfg)
