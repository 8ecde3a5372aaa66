"""`StoreRecorder`: the `Recorder` that writes one claimed run into a ResultsStore.

It uses the store through `RecordingStore`, the few public methods it needs (a ResultsStore has
them; `precisionlab.store.results` imports this module, not the other way round)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from precisionlab.runtime import provenance
from precisionlab.store.corpus import check_new_run
from precisionlab.store.identity import dumps
from precisionlab.store.liveness import Lease
from precisionlab.store.schema import (
    METRIC_KEYS,
    OUTCOME_KEYS,
    OUTCOMES,
    StoreError,
    finite,
)

__all__ = ["StoreRecorder", "RecordingStore"]


class RecordingStore(Protocol):
    """What a StoreRecorder uses of its store: a `store.database.Database`'s `write`, `error` and
    `close`, the liveness window `stale_after`, and ResultsStore's `add_sharpness` and `release_claim`."""

    stale_after: float

    def write(self, transaction: Callable[..., Any], *args: Any) -> Any: ...

    def error(self, problem: str) -> StoreError: ...

    def close(self) -> None: ...

    def add_sharpness(self, run_id: str, step: int, metric: str, value: float,
                      params: Mapping[str, Any] | None = None) -> None: ...

    def release_claim(self, run_id: str, token: str) -> None: ...


class StoreRecorder:
    """`precisionlab.train.recorder.Recorder` writing one claimed run into a ResultsStore.

    Metric and diagnostics rows are buffered and written every `flush_every` metric rows or
    `flush_seconds`, before each checkpoint row and with the outcome. A `Lease`
    thread renews the run's heartbeat meanwhile (`store.liveness`). Every
    write is guarded by the claim: if another process took the run over
    (this one was presumed dead), writing raises StoreError.
    As a context manager, a run that leaves without `finish` is recorded as
    failed (with the exception, if any).
    """

    def __init__(self, store: RecordingStore, run_id: str, token: str, flush_every: int, flush_seconds: float):
        self.store, self.run_id, self._token = store, run_id, token
        self.flush_every, self.flush_seconds = flush_every, flush_seconds
        self._rows: list[tuple] = []
        self._diagnostics: list[tuple] = []  # (run_id, step, site, name, value)
        self._last_flush = time.monotonic()
        self.finished = False
        self._lease = Lease(store, run_id, token, store.stale_after)

    def _commit(self, transaction=None, **columns: Any) -> None:
        """One transaction: refresh the heartbeat and set `columns` if we still
        hold the claim, write the buffered rows, then run `transaction(conn)`."""

        def write(conn):
            assignments = "".join(f", {name}=?" for name in columns)
            held = conn.execute(f"UPDATE runs SET heartbeat=?{assignments} WHERE run_id=? AND claim=?",
                                (time.time(), *columns.values(), self.run_id, self._token)).rowcount
            if not held:
                raise self.store.error(f"run {self.run_id} is no longer claimed by this process "
                                       "(another process took it over as interrupted)")
            conn.executemany(
                "INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(run_id, step, split) DO UPDATE SET "
                "loss=excluded.loss, lr=excluded.lr, grad_norm=excluded.grad_norm, tokens=excluded.tokens, "
                "elapsed=excluded.elapsed, extra=excluded.extra", self._rows)
            conn.executemany("INSERT INTO diagnostics VALUES (?, ?, ?, ?, ?) ON CONFLICT(run_id, step, site, name) "
                             "DO UPDATE SET value=excluded.value", self._diagnostics)
            if transaction is not None:
                transaction(conn)

        self.store.write(write)
        self._rows, self._diagnostics = [], []
        self._last_flush = time.monotonic()

    def flush(self) -> None:
        self._commit()

    # ---- the Recorder protocol

    def start(self, meta: Mapping[str, Any]) -> None:
        """Store `meta` (JSON) and provenance: meta's "git_rev" and "versions"
        ({"torch", "triton", "precisionlab"}) win over what is detected here."""
        versions = dict(meta.get("versions") or {})
        found = provenance()
        columns = {
            "git_rev": meta.get("git_rev") or found["git_rev"],
            **{f"{name}_version": versions.get(name) or found[name]
               for name in ("torch", "triton", "precisionlab")},
            "meta": dumps({k: v for k, v in meta.items() if k != "config"}),
        }
        self._commit(lambda conn: check_new_run(lambda sql, params: conn.execute(sql, params).fetchall(), self.run_id),
                     **columns)

    def log(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        extra = {k: v for k, v in metrics.items() if k not in METRIC_KEYS}
        self._rows.append((self.run_id, step, split, *(finite(metrics.get(k)) for k in METRIC_KEYS),
                           dumps(extra) if extra else None))
        if len(self._rows) >= self.flush_every or time.monotonic() - self._last_flush >= self.flush_seconds:
            self._commit()

    def checkpoint(self, step: int, path: str) -> None:
        self._commit(lambda conn: conn.execute(
            "INSERT INTO checkpoints VALUES (?, ?, ?, ?) ON CONFLICT(run_id, step) DO UPDATE SET "
            "path=excluded.path, created=excluded.created",
            (self.run_id, step, os.path.abspath(path), time.time())))

    def sharpness(self, step: int, metric: str, value: float, params: Mapping[str, Any]) -> None:
        """A sharpness value measured during training (`sharpness.every`), as `add_sharpness` writes it."""
        self.store.add_sharpness(self.run_id, step, metric, value, params)

    def diagnostics(self, step: int, rows: list[tuple[str, str, float]]) -> None:
        """Numerical diagnostics of a step (`diagnostics.every`), written with the next metric rows."""
        self._diagnostics += [(self.run_id, step, site, name, finite(value)) for site, name, value in rows]

    def finish(self, outcome: Mapping[str, Any]) -> None:
        """Write the outcome and the last rows in one transaction. `outcome`:
        "status" (completed/diverged/failed) and any of OUTCOME_KEYS ("steps"
        is accepted for "steps_done"); losses and steps left out are taken
        from the logged metrics."""
        status = outcome.get("status")
        if status not in OUTCOMES:
            raise ValueError(f"outcome status must be one of {', '.join(OUTCOMES)}, not {status!r}")
        values = {k: finite(outcome.get(k)) for k in OUTCOME_KEYS}
        if values["steps_done"] is None:
            values["steps_done"] = outcome.get("steps")
        if values["error"] is not None:
            values["error"] = str(values["error"])

        def derive(conn):
            def one(sql, split):
                row = conn.execute(sql, (self.run_id, split)).fetchone()
                return None if row is None else row[0]

            last = "SELECT loss FROM metrics WHERE run_id=? AND split=? ORDER BY step DESC LIMIT 1"
            derived = {
                "steps_done": one("SELECT MAX(step) FROM metrics WHERE run_id=? AND split=?", "train"),
                "final_train_loss": one(last, "train"),
                "final_val_loss": one(last, "val"),
                "min_val_loss": one("SELECT MIN(loss) FROM metrics WHERE run_id=? AND split=?", "val"),
                "initial_loss": one(last.replace("DESC", "ASC"), "train"),
            }
            now = time.time()
            started = conn.execute("SELECT started FROM runs WHERE run_id=?", (self.run_id,)).fetchone()[0]
            derived["wall_time"] = None if started is None else now - started
            columns = {k: (derived.get(k) if v is None else v) for k, v in values.items()}
            conn.execute(
                f"UPDATE runs SET status=?, finished=?, claim=NULL, "
                f"{', '.join(f'{k}=?' for k in columns)} WHERE run_id=?",
                (status, now, *columns.values(), self.run_id))

        self._lease.stop()
        self._commit(derive)
        self.finished = True
        self.store.release_claim(self.run_id, self._token)

    # ---- context manager

    def __enter__(self) -> "StoreRecorder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.finished:
            return
        error = f"{exc_type.__name__}: {exc}" if exc_type else "ended without recording an outcome"
        try:
            self.finish({"status": "failed", "error": error})
        except StoreError:
            if exc_type is None:
                raise  # otherwise the run's own exception is the one to see
