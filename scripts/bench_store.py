"""Write overhead of the results store per logged training step, and a micro sweep's
runs/hour, on SQLite and on a local PostgreSQL server, in one run.

Logs the same synthetic run (a train row every step, a val row every 100
steps, a checkpoint every 2000 steps, then the outcome) through:
  - an in-memory list (the floor: what any recorder costs at least),
  - StoreRecorder with its default batching (flush_every=256),
  - StoreRecorder writing every row at once (flush_every=1), for contrast,
on each backend, and prints µs per logged step and the store's overhead. Then runs
one micro sweep of 16 runs (`--jobs 4`) into each backend and prints runs/hour.
The PostgreSQL server is a throwaway one (`precisionlab.store.pgserver`, fsync on,
as a server that keeps results runs), started and removed here.

    python scripts/bench_store.py [--steps 20000] [--sweep-runs 16] [--jobs 4] [--no-postgres]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from precisionlab.store import ResultsStore, run_id

CLI = str(Path(sys.executable).with_name("precisionlab"))
MICRO = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "train.steps=50", "train.batch_size=4",
         "train.seq_len=16", "train.eval_every=25", "train.eval_batches=2", "optim.warmup_steps=2",
         "precision.format=e8m3", "optim.lr=1e-3", "train.checkpoint_every=25", "train.divergence.factor=10"]


class ListRecorder:
    def __init__(self):
        self.rows, self.checkpoints, self.outcome = [], [], None

    def start(self, meta):
        self.meta = meta

    def log(self, step, split, metrics):
        self.rows.append((step, split, dict(metrics)))

    def checkpoint(self, step, path):
        self.checkpoints.append((step, path))

    def finish(self, outcome):
        self.outcome = outcome


def drive(recorder, steps: int) -> float:
    """Seconds spent inside the recorder for one synthetic run."""
    begin = time.perf_counter()
    recorder.start({"device": "cpu"})
    for step in range(1, steps + 1):
        recorder.log(step, "train", {"loss": 4.0 - step * 1e-4, "lr": 1e-3, "grad_norm": 0.7,
                                     "tokens": 4096 * step, "elapsed": 0.05 * step})
        if step % 100 == 0:
            recorder.log(step, "val", {"loss": 4.1 - step * 1e-4})
        if step % 2000 == 0:
            recorder.checkpoint(step, f"ckpt/{step}.pt")
    recorder.finish({"status": "completed"})
    return time.perf_counter() - begin


def store_run(folder: Path, steps: int, flush_every: int, name: str, location: str | None = None) -> float:
    store = ResultsStore(location or folder / f"{name}.db")
    config = {"bench": name, "steps": steps, "flush_every": flush_every}
    rid = run_id(config)
    assert store.claim_run(rid, config)
    seconds = drive(store.recorder(rid, flush_every=flush_every), steps)
    assert len(store.metrics(rid)) == steps + steps // 100
    return seconds


def sweep_runs_per_hour(folder: Path, store: str, runs: int, jobs: int) -> float:
    """Runs/hour of one micro sweep of `runs` runs, `jobs` at once, into `store` (start-up included)."""
    command = [CLI, "sweep", "--jobs", str(jobs), f"store.url={store}", f"seed=range({runs})", *MICRO]
    begin = time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    seconds = time.perf_counter() - begin
    if done.returncode != 0:
        sys.exit(f"sweep into {store.split('@')[-1]} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    finished = ResultsStore(store).runs()
    assert len(finished) == runs and set(finished.status) == {"completed"} and set(finished.attempts) == {1}
    return runs / seconds * 3600


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--sweep-runs", type=int, default=16, help="runs in the micro sweep (0: skip it)")
    parser.add_argument("--jobs", type=int, default=4, help="runs at once in the micro sweep")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        stores = {"sqlite": None}
        server = None
        if not args.no_postgres:
            from precisionlab.store.pgserver import ThrowawayServer

            server = ThrowawayServer(tempfile.mkdtemp(prefix="bench-pg-"))
            server.start()
            stores["postgresql"] = server
        try:
            drive(ListRecorder(), args.steps)  # warm-up: the first pass pays for allocations the others reuse
            floor = drive(ListRecorder(), args.steps)
            results, sweeps = {"in-memory list": floor}, {}
            for backend, srv in stores.items():
                for flush_every, name in ((256, "batched"), (1, "unbatched")):
                    location = srv.create_database(f"bench_{name}") if srv else None
                    results[f"{backend}, flush_every={flush_every}"] = store_run(folder, args.steps, flush_every,
                                                                                  name, location)
                if args.sweep_runs:
                    (folder / backend).mkdir()
                    target = srv.create_database("bench_sweep") if srv else f"sqlite:///{folder / backend / 'store.db'}"
                    sweeps[backend] = sweep_runs_per_hour(folder / backend, target, args.sweep_runs, args.jobs)
        finally:
            if server is not None:
                server.remove()
    print(f"{args.steps} steps ({args.steps // 100} val rows, {args.steps // 2000} checkpoints); SQLite in a temp "
          f"folder, PostgreSQL on a local throwaway server (fsync on)")
    print(f"{'recorder':<30} {'us/step':>9} {'overhead us/step':>17} {'x list':>8}")
    for label, seconds in results.items():
        per_step = seconds / args.steps * 1e6
        print(f"{label:<30} {per_step:>9.2f} {(seconds - floor) / args.steps * 1e6:>17.2f} {seconds / floor:>8.1f}")
    if sweeps:
        print(f"micro sweep: {args.sweep_runs} runs of 50 steps, --jobs {args.jobs}, start-up included")
        for backend, rate in sweeps.items():
            print(f"  {backend:<12} {rate:>8.0f} runs/hour ({rate / sweeps['sqlite']:.2f}x SQLite)")


if __name__ == "__main__":
    main()
