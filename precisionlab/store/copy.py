"""Copying sweeps between results stores: `precisionlab store copy SRC DST [--sweep NAME]`.

Typically a cluster's PostgreSQL store to a laptop's SQLite file, for the report; any
direction works. Each sweep is read from SRC in one read transaction (a consistent snapshot,
also while its sweep runs) and written to DST in one transaction, so a copy killed midway
leaves DST as it was for that sweep. Copying again is harmless (idempotent) and brings DST up
to date, by this rule per run:

- DST holds the run done (completed or diverged) and SRC does not: DST's run is kept as it is.
- Otherwise the run's row, its metrics, checkpoint and diagnostics rows in DST become SRC's.
- Sharpness values are merged by (run, step, metric, parameters): values measured at DST stay.

A sweep whose runs in SRC and DST trained on different data for one data config (two machines'
built-in corpora, precisionlab.store.corpus) is not copied: StoreError, DST unchanged.

Checkpoint rows keep SRC's paths; the checkpoint files themselves are not copied.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from precisionlab.store.corpus import check_one_corpus, recorded, recorded_rows
from precisionlab.store.results import ResultsStore
from precisionlab.store.schema import DONE, StoreError
from precisionlab.store.url import parse_store_url

__all__ = ["CopyResult", "copy_sweeps", "sweeps_to_copy"]

_OF_SWEEP = "run_id IN (SELECT run_id FROM sweep_runs WHERE sweep=?)"
_KEYS = {"sweeps": ("name",), "runs": ("run_id",), "sharpness": ("run_id", "step", "metric", "params")}
_PER_RUN = ("metrics", "checkpoints", "diagnostics")  # a copied run's rows of these become SRC's


@dataclass
class CopyResult:
    sweep: str
    runs: int         # runs of the sweep in SRC
    copied: int       # ... whose rows DST now has from SRC (new or updated)
    kept: int         # ... left as DST had them (done there, not in SRC)
    metrics: int      # metric rows written
    checkpoints: int  # checkpoint rows written
    sharpness: int    # sharpness values written (merged)
    diagnostics: int = 0  # diagnostics rows written

    def line(self) -> str:
        kept = f", {self.kept} kept (done in the destination, not in the source)" if self.kept else ""
        return (f"sweep {self.sweep}: {self.runs} runs, {self.copied} copied{kept}; {self.metrics} metric rows, "
                f"{self.checkpoints} checkpoint rows, {self.sharpness} sharpness values, {self.diagnostics} diagnostics rows")


def _upsert(table: str, columns: list[str], keep: tuple[str, ...] = ()) -> str:
    """INSERT of `columns` into `table` that replaces an existing row (same key) column by
    column, but for the columns in `keep`."""
    keys = _KEYS[table]
    update = ", ".join(f"{c}=excluded.{c}" for c in columns if c not in keys + keep)
    return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
            f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {update}")


def _insert(table: str, columns: list[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


def _copy_sweep(src: ResultsStore, dst: ResultsStore, name: str) -> CopyResult:
    (sweep_cols, sweep_rows), (run_cols, runs), *per_run, (sharp_cols, sharp) = \
        src.snapshot([("SELECT * FROM sweeps WHERE name=?", [name]),
                      (f"SELECT * FROM runs WHERE {_OF_SWEEP} ORDER BY run_id", [name]),
                      *((f"SELECT * FROM {table} WHERE {_OF_SWEEP}", [name]) for table in _PER_RUN),
                      (f"SELECT * FROM sharpness WHERE {_OF_SWEEP}", [name])])
    rid, status, config, meta = (run_cols.index(c) for c in ("run_id", "status", "config", "meta"))
    src_done = {r[rid]: r[status] in DONE for r in runs}

    def write(tx) -> CopyResult:
        mine = recorded_rows((r[rid], r[config], r[meta]) for r in runs)
        held_here = recorded(lambda sql, params: tx.execute(sql, params).fetchall(), name, [r[0] for r in mine])
        check_one_corpus([*held_here, *mine], f"copying sweep {name} into {dst.location}")
        tx.executemany(_upsert("sweeps", sweep_cols, keep=("created",)), sweep_rows)  # SRC's latest command and grid
        held = {}
        for i in range(0, len(runs), 500):
            chunk = [r[rid] for r in runs[i:i + 500]]
            held.update(tx.execute(f"SELECT run_id, status FROM runs WHERE run_id IN ({','.join('?' * len(chunk))})",
                                   chunk).fetchall())
        taken = {r for r, done in src_done.items() if not (held.get(r) in DONE and not done)}
        tx.executemany(_upsert("runs", run_cols), [r for r in runs if r[rid] in taken])
        tx.executemany("INSERT INTO sweep_runs (sweep, run_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                       [(name, r[rid]) for r in runs])
        written = []
        for table, (cols, rows) in zip(_PER_RUN, per_run):  # replaced as a whole
            tx.executemany(f"DELETE FROM {table} WHERE run_id=?", [(r,) for r in taken])
            rows = [row for row in rows if row[cols.index("run_id")] in taken]
            tx.executemany(_insert(table, cols), rows)
            written.append(len(rows))
        sharp_rows = [s for s in sharp if s[sharp_cols.index("run_id")] in taken]
        tx.executemany(_upsert("sharpness", sharp_cols), sharp_rows)
        metric_rows, ckpt_rows, diagnostic_rows = written
        return CopyResult(name, len(runs), len(taken), len(runs) - len(taken), metric_rows, ckpt_rows,
                          len(sharp_rows), diagnostic_rows)

    return dst.write(write)


def sweeps_to_copy(src: ResultsStore, destination: str, sweeps: Sequence[str] | None = None) -> list[str]:
    """The sweeps to copy from `src` into the store at `destination` (a path or URL), checked before
    anything is opened there: StoreError (one line) for an unknown sweep, an empty source, or one
    store given twice (a path through a symbolic link included)."""
    a, b = parse_store_url(src.url), parse_store_url(destination)
    same = (os.path.realpath(a.target) == os.path.realpath(b.target)) if a.backend == b.backend == "sqlite" else a.url == b.url
    if same:
        raise StoreError(f"source and destination are the same results store ({src.location}); "
                         "give two different stores")
    names = list(dict.fromkeys(sweeps)) if sweeps else list(src.sweeps()["name"])
    if not names:
        raise StoreError(f"results store {src.location} holds no sweeps; nothing to copy")
    for name in names:
        src.sweep_name(name)  # StoreError naming the sweeps there
    return names


def copy_sweeps(src: ResultsStore, dst: ResultsStore, sweeps: Sequence[str] | None = None) -> list[CopyResult]:
    """Copy `sweeps` (default: all of SRC's) from `src` to `dst`, one transaction per sweep.
    StoreError (one line) as `sweeps_to_copy`."""
    names = sweeps_to_copy(src, dst.url, sweeps)
    return [_copy_sweep(src, dst, name) for name in names]
