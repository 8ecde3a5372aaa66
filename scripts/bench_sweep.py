"""Sweep throughput: runs/hour of a grid with one run at a time vs N at once (joblib), in one go,
and the results store's write cost per training step.

Runs `precisionlab sweep` through the console script, each launcher in a fresh temporary
directory and store, so Python start-up, grid validation and Hydra's launch are counted:
  sequential   the basic launcher, one run at a time with all the cores' torch threads
  seq 1 thr    the same with train.threads=1 (the baseline --jobs N should multiply by N)
  --jobs N     the joblib launcher, N runs at once with cores/N threads each
Store overhead: scripts/bench_store.py's synthetic run (a train row per step, a val row
per 100 steps, a checkpoint per 2000), set against the training step time measured here.

    python scripts/bench_sweep.py                 # sweep=default with train.steps=50
    python scripts/bench_sweep.py --steps 150     # the default grid as it is
    python scripts/bench_sweep.py --jobs 2 -- precision.format=e8m7,e8m3 seed=0

Tracker overhead (`--trackers`, instead of the above): one default-sweep run (tiny model, mask e8m3,
lr 3e-3, checkpoints every 100 steps, `--steps` steps) trained in this process as a sweep's job trains
it (store, run directory), with train.loggers off, each tracker alone, and all three (W&B offline, MLflow
in its default SQLite file), in interleaved rounds after an uncounted 5-step warm-up of each (imports,
W&B's service, MLflow's database creation: once per sweep process); median wall time per run over
rounds, and its ratio to loggers off (goal: all three <= 1.05x). On a loaded machine that ratio is mostly
noise, so each run also times the seconds the training loop spends inside the tracker hooks (what the
trackers add to it, W&B's and TensorBoard's writer threads and processes aside) and prints
wall / (wall - those seconds): the run's own ratio.

    python scripts/bench_sweep.py --trackers --steps 300 --rounds 3
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from precisionlab.store import ResultsStore

CLI = str(Path(sys.executable).with_name("precisionlab"))
HERE = Path(__file__).resolve().parent


def sweep(folder: Path, overrides: list[str], jobs: int | None) -> tuple[float, ResultsStore]:
    """Wall seconds of one `precisionlab sweep` in `folder`, and its store."""
    command = [CLI, "sweep", *(["--jobs", str(jobs)] if jobs else []), *overrides]
    begin = time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    seconds = time.perf_counter() - begin
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, ResultsStore(folder / "results" / "precisionlab.db")


def step_seconds(store: ResultsStore) -> float:
    """Mean training step time (run's own clock) over the store's runs."""
    train = store.metrics(split="train")
    last = train.sort_values("step").groupby("run_id").tail(1)
    return float(last.elapsed.sum() / last.step.sum())


def store_overhead_us(steps: int) -> float:
    """µs per logged step that the store adds over an in-memory list (bench_store.py's measurement)."""
    spec = importlib.util.spec_from_file_location("bench_store", HERE / "bench_store.py")
    bench_store = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_store)
    with tempfile.TemporaryDirectory() as tmp:
        floor = bench_store.drive(bench_store.ListRecorder(), steps)
        batched = bench_store.store_run(Path(tmp), steps, 256, "batched")
    return (batched - floor) / steps * 1e6


TRACKER_VARIANTS = {"off": "[]", "tensorboard": "[tensorboard]", "mlflow": "[mlflow]", "wandb": "[wandb]",
                    "all three": "[tensorboard,mlflow,wandb]"}


def _timed_trackers() -> list[float]:
    """Make every TrackerRecorder hook add its wall seconds to the returned list's one number: the time the
    training loop waits on the trackers, measured inside the run (independent of the machine's load)."""
    from precisionlab.store.trackers import TrackerRecorder

    spent = [0.0]
    for hook in ("start", "log", "sharpness", "diagnostics", "finish"):
        def timed(self, *args, _real=getattr(TrackerRecorder, hook)):
            begin = time.perf_counter()
            try:
                return _real(self, *args)
            finally:
                spent[0] += time.perf_counter() - begin
        setattr(TrackerRecorder, hook, timed)
    return spent


def tracker_overhead(steps: int, rounds: int, overrides: list[str]) -> dict[str, tuple[float, float]]:
    """Per TRACKER_VARIANTS entry, the medians over rounds of (wall seconds of one default-sweep run, seconds of
    it spent inside the tracker hooks); see the module's doc."""
    import statistics

    from hydra import compose, initialize_config_module

    from precisionlab.config import make_paths_absolute, validate
    from precisionlab.run.job import recorded_run
    from precisionlab.train.rundir import RunDirRecorder

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    times: dict[str, list[float]] = {name: [] for name in TRACKER_VARIANTS}
    inside: dict[str, list[float]] = {name: [] for name in TRACKER_VARIANTS}
    spent = _timed_trackers()
    with tempfile.TemporaryDirectory() as tmp, initialize_config_module(config_module="precisionlab.configs",
                                                                        version_base="1.3"):
        os.chdir(tmp)
        store = ResultsStore(Path(tmp) / "bench.db")

        def one(loggers: str, n_steps: int) -> float:
            cfg = compose(config_name="sweep", overrides=[
                "sweep=default", "precision.format=e8m3", "optim.lr=3e-3", "seed=0", f"train.steps={n_steps}",
                f"train.loggers={loggers}", "loggers.dir=runs", *overrides])
            make_paths_absolute(cfg, tmp)
            cfg = validate(cfg)
            begin = time.perf_counter()
            result = recorded_run(cfg, store, RunDirRecorder(Path(tmp) / "rundir"), sweep="bench", force=True)
            seconds = time.perf_counter() - begin
            if result.status != "completed":
                sys.exit(f"train.loggers={loggers}: the run {result.status}: {result.error}")
            return seconds

        for loggers in TRACKER_VARIANTS.values():  # warm-up: not counted
            one(loggers, 5)
        for _ in range(rounds):
            for name, loggers in TRACKER_VARIANTS.items():
                spent[0] = 0.0
                times[name].append(one(loggers, steps))
                inside[name].append(spent[0])
        store.close()
    return {name: (statistics.median(times[name]), statistics.median(inside[name])) for name in TRACKER_VARIANTS}


def print_tracker_overhead(args) -> None:
    import precisionlab

    medians = tracker_overhead(args.steps, args.rounds, args.overrides)
    off = medians["off"][0]
    print(f"tracker overhead: one default-sweep run (tiny, mask e8m3), {args.steps} steps, median of {args.rounds} "
          f"interleaved rounds, {len(os.sched_getaffinity(0))} cores, precisionlab {precisionlab.__version__}")
    print("  vs off: wall time over the 'off' run's (both runs' noise); in hooks: the run's seconds inside the tracker "
          "hooks, and wall / (wall - in hooks), that run's own ratio")
    print(f"{'train.loggers':<14} {'s/run':>7} {'vs off':>7} {'in hooks s':>11} {'own ratio':>10}")
    for name, (seconds, hooks) in medians.items():
        print(f"{name:<14} {seconds:>7.2f} {seconds / off:>6.3f}x {hooks:>11.3f} {seconds / (seconds - hooks):>9.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="train.steps per run (the default grid has 150)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once for the parallel measurement")
    parser.add_argument("--store-steps", type=int, default=5000, help="synthetic steps for the store overhead")
    parser.add_argument("--trackers", action="store_true", help="measure train.loggers' overhead instead (see above)")
    parser.add_argument("--rounds", type=int, default=3, help="--trackers: interleaved rounds")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides for both sweeps (after --)")
    args = parser.parse_args()
    if args.trackers:
        print_tracker_overhead(args)
        return
    overrides = [f"train.steps={args.steps}", *args.overrides]
    cores = len(os.sched_getaffinity(0))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, jobs, extra in (("sequential", None, []), ("seq 1 thr", None, ["train.threads=1"]),
                                   (f"--jobs {args.jobs}", args.jobs, [])):
            folder = Path(tmp) / label.replace(" ", "").replace("-", "")
            folder.mkdir()
            seconds, store = sweep(folder, [*overrides, *extra], jobs)
            runs = store.runs()
            results[label] = (len(runs), seconds, step_seconds(store), {k: int(v) for k, v in runs.status.value_counts().items()})
    overhead = store_overhead_us(args.store_steps)

    print(f"precisionlab sweep {' '.join(overrides)}   ({cores} cores, wall time incl. start-up)")
    print(f"{'launcher':<12} {'runs':>5} {'wall s':>8} {'runs/hour':>10} {'step ms':>8}  outcomes")
    for label, (n, seconds, step, outcomes) in results.items():
        print(f"{label:<12} {n:>5} {seconds:>8.1f} {n / seconds * 3600:>10.0f} {step * 1e3:>8.1f}  {outcomes}")
    (n1, s1, step1, _), (n0, s0, _, _), (n2, s2, _, _) = results.values()
    print(f"throughput --jobs {args.jobs} / sequential: {(n2 / s2) / (n1 / s1):.2f}x; "
          f"/ sequential one-thread runs: {(n2 / s2) / (n0 / s0):.2f}x (ideal {args.jobs}x)")
    print(f"store write overhead: {overhead:.1f} us per logged step (bench_store.py, flush_every=256) "
          f"= {overhead / (step1 * 1e6) * 100:.3f}% of a sequential training step ({step1 * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
