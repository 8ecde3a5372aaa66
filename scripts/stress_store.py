"""Many processes on one results store at once: sweeps over overlapping grids, reports and
sharpness, for a fixed time; then check that no run was lost or computed twice and that every
command's exit code told the truth.

    python scripts/stress_store.py                      # 4 sweeps + 2 report + 2 sharpness loops, 150 s
    python scripts/stress_store.py --sweeps 6 --seconds 300

Each sweep process runs rounds until the time is up: round r is a grid of micro runs (seeds
r*SHIFT .. r*SHIFT+SEEDS-1) and the sweeps start their rounds at different offsets, so
neighbouring sweeps always share runs, which only one of them may compute. Reports and
sharpness loop over the same store meanwhile. At the end, for every run of every grid launched:
  lost        not in the store, or not completed/diverged once all processes have exited
  duplicated  computed more than once (`attempts` > 1: the run was claimed twice)
and every command must have exited 0 (a sweep whose runs all finished, a report of what exists,
sharpness of the checkpoints there). Prints one line per check; exits 1 if any fails.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from precisionlab.store import ResultsStore

CLI = str(Path(sys.executable).with_name("precisionlab"))
MICRO = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "train.steps=12", "train.batch_size=4",
         "train.seq_len=16", "train.eval_every=6", "train.eval_batches=1", "optim.warmup_steps=2",
         "train.checkpoint_every=6", "train.threads=1", "precision=mask", "precision.format=e8m5", "optim.lr=3e-3"]
SEEDS, SHIFT = 6, 3  # a round's grid; consecutive rounds (and sweeps) overlap by SEEDS - SHIFT seeds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweeps", type=int, default=4, help="concurrent sweep processes")
    parser.add_argument("--readers", type=int, default=2, help="concurrent report loops and as many sharpness loops")
    parser.add_argument("--seconds", type=float, default=150.0, help="how long to keep starting new work")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="precisionlab-stress-"))
    store_path = folder / "store.db"
    deadline = time.monotonic() + args.seconds
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def start(kind: str, index: int, round_: int) -> tuple[str, list[int], subprocess.Popen]:
        cwd = folder / f"{kind}{index}"
        cwd.mkdir(exist_ok=True)
        log = open(cwd / f"round{round_}.log", "w")
        if kind == "sweep":
            first = (round_ * args.sweeps + index) * SHIFT
            seeds = list(range(first, first + SEEDS))
            command = [CLI, "sweep", f"store.path={store_path}", f"sweep.name=stress-{first}",
                       f"seed={','.join(map(str, seeds))}", *MICRO]
        elif kind == "report":
            seeds, command = [], [CLI, "report", "--store", str(store_path), "--out", str(cwd / f"out{round_}")]
        else:
            seeds, command = [], [CLI, "sharpness", "--store", str(store_path), "--device", "cpu"]
        return kind, seeds, subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)

    # The store exists before the readers start (they never create one).
    first_sweep = start("sweep", 0, 0)
    while not store_path.exists() and first_sweep[2].poll() is None:
        time.sleep(0.2)
    running = {("sweep", 0): (0, first_sweep)}
    running |= {("sweep", i): (0, start("sweep", i, 0)) for i in range(1, args.sweeps)}
    running |= {(k, i): (0, start(k, i, 0)) for k in ("report", "sharpness") for i in range(args.readers)}
    finished: list[tuple[str, list[int], int, str]] = []  # kind, seeds, exit code, log tail
    peak = len(running)
    while running:
        time.sleep(0.5)
        for key, (round_, (kind, seeds, proc)) in list(running.items()):
            if proc.poll() is None:
                continue
            log = (folder / f"{key[0]}{key[1]}" / f"round{round_}.log").read_text()
            finished.append((kind, seeds, proc.returncode, log.strip().splitlines()[-1] if log.strip() else ""))
            del running[key]
            sweeps_left = any(k[0] == "sweep" for k in running)
            if time.monotonic() < deadline and (kind == "sweep" or sweeps_left):
                running[key] = (round_ + 1, start(kind, key[1], round_ + 1))
        peak = max(peak, len(running))

    store = ResultsStore(store_path, read_only=True)
    runs = store.runs()
    by_seed = {int(seed): row for seed, row in zip(runs.seed, runs.itertuples())}
    wanted = sorted({s for kind, seeds, _, _ in finished for s in seeds})
    lost = [s for s in wanted if s not in by_seed or by_seed[s].status not in ("completed", "diverged")]
    duplicated = [s for s in wanted if s in by_seed and by_seed[s].attempts > 1]
    bad_exits = [(kind, code, tail) for kind, _, code, tail in finished if code != 0]
    counts = {k: sum(1 for f in finished if f[0] == k) for k in ("sweep", "report", "sharpness")}
    print(f"{peak} processes at once on {store_path} for {args.seconds:.0f} s: "
          f"{counts['sweep']} sweeps, {counts['report']} reports, {counts['sharpness']} sharpness runs")
    print(f"runs launched: {len(wanted)} distinct ({sum(len(f[1]) for f in finished)} grid points); "
          f"in the store: {len(runs)}; sharpness values: {len(store.sharpness())}")
    print(f"lost: {len(lost)} {lost[:10]}")
    print(f"computed twice: {len(duplicated)} {duplicated[:10]}")
    print(f"commands with a non-zero exit: {len(bad_exits)}")
    for kind, code, tail in bad_exits[:10]:
        print(f"  {kind} exited {code}: {tail}")
    store.close()
    return 1 if lost or duplicated or bad_exits else 0


if __name__ == "__main__":
    sys.exit(main())
