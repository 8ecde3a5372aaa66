"""What a sweep shows while it runs and when it ends: `Progress` (polls the store, so it sees
runs finish in any process or machine the launcher uses) and `summary`.

The summary is counts and means per format and learning rate, labelled as the report labels
runs (precisionlab.analysis.labels); it loads none of the report's statistics, plots or
matplotlib, so a sweep starts light. The report (`precisionlab report`) adds the intervals and tests."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import pandas as pd

from precisionlab.analysis.labels import label_runs, variant_sorted
from precisionlab.store import DEFAULT_STORE_PATH, DONE, OUTCOMES, ResultsStore, parse_store_url
from precisionlab.sweep.plan import Grid

__all__ = ["Progress", "summary", "complete", "outcome_table"]


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
              f"store {self.store.location}", file=self.stream, flush=True)
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


def outcome_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Labelled runs (`label_runs`) as text per variant x LR: diverged / finished, the median step of
    the divergences, the completed runs' final validation loss (mean ± std over seeds), spikes, and
    failed runs where there are any."""
    rows = []
    for (variant, lr), g in runs.groupby(["variant", "lr"], dropna=False):
        finished, diverged = g[g.status.isin(DONE)], g[g.status == "diverged"]
        losses = g[g.status == "completed"].final_val_loss.dropna().astype(float)
        loss = "–" if losses.empty else f"{losses.mean():.4f}" + (f" ± {losses.std(ddof=1):.4f}" if len(losses) > 1 else "")
        rows.append({"variant": variant, "format": variant, "lr": f"{lr:.3g}", "diverged": f"{len(diverged)}/{len(finished)}",
                     "median div. step": f"{diverged.diverged_step.astype(float).median():.0f}" if len(diverged) else "–",
                     "final val loss": loss, "spikes": str(int(g.spikes.fillna(0).sum())),
                     "failed": int((g.status == "failed").sum()), "_lr": lr})
    table = variant_sorted(pd.DataFrame(rows), "_lr") if rows else pd.DataFrame(rows)
    if len(table) and not table.failed.any():
        table = table.drop(columns="failed")
    return table.drop(columns=["variant", "_lr"], errors="ignore")


def summary(store: ResultsStore, grid: Grid) -> tuple[str, dict[str, int]]:
    """The end-of-sweep lines (results per format x LR, counts by status, the report command) and the counts:
    by status, `unfinished` (runs of the grid still pending or running, or missing from the store) and,
    when there are any, `unfinished_reason` (one line)."""
    runs = store.runs(sweep=grid.name)
    runs = runs[runs.run_id.isin(set(grid.runs))]
    statuses = runs.status.value_counts()
    counts = {s: int(statuses.get(s, 0)) for s in ("completed", "diverged", "failed", "running", "pending")}
    line = (f"sweep {grid.name}: {len(grid.runs)} runs: {counts['completed']} completed, "
            f"{counts['diverged']} diverged, {counts['failed']} failed")
    counts["unfinished"] = counts["running"] + counts["pending"] + len(set(grid.runs) - set(runs.run_id))
    if counts["unfinished"]:
        line += f", {counts['unfinished']} not finished"
        why = []
        if counts["running"]:
            why.append(f"{counts['running']} running in another process, or killed (rerun to resume them)")
        if counts["unfinished"] - counts["running"]:
            why.append(f"{counts['unfinished'] - counts['running']} never started: their jobs failed before "
                       "training and the store could not record why (see their run.log)")
        counts["unfinished_reason"] = f"sweep {grid.name}: {counts['unfinished']} runs not finished: {'; '.join(why)}"
    table = outcome_table(label_runs(runs)).to_string(index=False) if len(runs) else "(no runs)"
    command = f"precisionlab report --sweep {grid.name}"
    if grid.store != parse_store_url(DEFAULT_STORE_PATH).url:
        command += f" --store {store.location if store.backend == 'sqlite' else repr(store.location)}"
    return f"{table}\n{line}\nsee the report (tables, plots, HTML): {command}", counts


def complete(store: ResultsStore, grid: Grid, launch, *, poll: float = 2.0, stream=None) -> None:
    """Launch the grid, then see it finished: runs that another process was computing (an
    overlapping sweep on the same store) are waited for, and runs left interrupted (their
    process died, here or elsewhere) are launched once more, which resumes them. Returns when
    no run of the grid is running in a live process; `summary` then tells what is unfinished."""
    stream = stream or sys.stderr
    launch()
    for last in (False, True):
        alive, interrupted = store.running(grid.runs)
        if alive:
            print(f"sweep {grid.name}: waiting for {len(alive)} runs that other processes are computing",
                  file=stream, flush=True)
        while alive:
            time.sleep(poll)
            alive, interrupted = store.running(grid.runs)
        if not interrupted or last:
            return
        print(f"sweep {grid.name}: resuming {len(interrupted)} interrupted runs", file=stream, flush=True)
        launch()
