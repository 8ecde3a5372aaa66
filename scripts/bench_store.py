"""Write overhead of the results store per logged training step.

Logs the same synthetic run (a train row every step, a val row every 100
steps, a checkpoint every 2000 steps, then the outcome) through:
  - an in-memory list (the floor: what any recorder costs at least),
  - StoreRecorder with its default batching (flush_every=256),
  - StoreRecorder writing every row at once (flush_every=1), for contrast,
all in one run, and prints µs per logged step and the store's overhead.

    python scripts/bench_store.py [--steps 20000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from precisionlab.store import ResultsStore, run_id


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


def store_run(folder: Path, steps: int, flush_every: int, name: str) -> float:
    store = ResultsStore(folder / f"{name}.db")
    config = {"bench": name, "steps": steps}
    rid = run_id(config)
    assert store.claim_run(rid, config)
    seconds = drive(store.recorder(rid, flush_every=flush_every), steps)
    assert len(store.metrics(rid)) == steps + steps // 100
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        results = {
            "in-memory list": drive(ListRecorder(), args.steps),
            "store, flush_every=256": store_run(folder, args.steps, 256, "batched"),
            "store, flush_every=1": store_run(folder, args.steps, 1, "unbatched"),
        }
    floor = results["in-memory list"]
    print(f"{args.steps} steps ({args.steps // 100} val rows, {args.steps // 2000} checkpoints), store in a temp folder")
    print(f"{'recorder':<24} {'us/step':>9} {'overhead us/step':>17} {'x list':>8}")
    for label, seconds in results.items():
        per_step = seconds / args.steps * 1e6
        print(f"{label:<24} {per_step:>9.2f} {(seconds - floor) / args.steps * 1e6:>17.2f} {seconds / floor:>8.1f}")


if __name__ == "__main__":
    main()
