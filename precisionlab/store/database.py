"""`Database`: one results store's connections and transactions, on either backend.

Every module of the store package reads and writes through this small interface (ResultsStore
is a Database; the run recorder, the lease and `store copy` use the same methods):

    write(transaction, *args)   transaction(tx, *args) in one write transaction
    query(sql, params)          (column names, rows) of one SELECT
    snapshot([(sql, params)])   several SELECTs read in one transaction
    read(sql, params)           one SELECT as a pandas DataFrame
    fetchone(sql, params)       the first row of one SELECT, or None
    error(problem)              a StoreError naming the store
    close()                     this thread's connection closed (reopened on next use)

`tx` is a `Transaction`: the connection with `?` placeholders on either backend.

- Every write is one short transaction that the backend serialises (SQLite's single writer,
  PostgreSQL's SERIALIZABLE isolation), retried with backoff while the database is locked,
  conflicting or unreachable (a server restart), for up to `retry_seconds`.
- Connections are opened lazily, one per process and thread, and reopened after a fork: a
  connection must never cross a fork.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd

from precisionlab.store.schema import StoreError
from precisionlab.store.sqlite import SQLiteBackend
from precisionlab.store.url import StoreURL, parse_store_url, redact

__all__ = ["Database", "Transaction", "RETRY_SECONDS", "RETRY_ENV", "default_retry_seconds"]

RETRY_SECONDS = 300.0  # how long a transaction is retried (after SQLite's own 60 s busy timeout)
RETRY_ENV = "PRECISIONLAB_STORE_RETRY_SECONDS"  # overrides RETRY_SECONDS (e.g. a short window, to test)
# Store URL -> when this process first found its server unreachable (time.monotonic), until a
# transaction gets through: every write path of the process (run recorder, claims, the sweep's
# progress) shares one retry window per outage, instead of each waiting out its own.
_UNREACHABLE: dict[str, float] = {}


def default_retry_seconds() -> float:
    """RETRY_SECONDS, or $PRECISIONLAB_STORE_RETRY_SECONDS when set (seconds >= 0)."""
    text = os.environ.get(RETRY_ENV)
    if text is None:
        return RETRY_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise StoreError(f"{RETRY_ENV} must be a number of seconds >= 0; got {text!r}")
    return value


def _backend(where: StoreURL):
    if where.backend == "sqlite":
        return SQLiteBackend(where)
    from precisionlab.store.postgres import PostgresBackend  # psycopg is imported only for a server store

    return PostgresBackend(where)


class Transaction:
    """A connection as the store's SQL sees it: `?` placeholders on either backend."""

    __slots__ = ("conn", "_sql")

    def __init__(self, conn: Any, sql: Callable[[str], str]):
        self.conn, self._sql = conn, sql

    def execute(self, text: str, params: Iterable[Any] | None = ()) -> Any:
        return self.conn.execute(self._sql(text), None if params is None else list(params))

    def executemany(self, text: str, rows: Iterable[Iterable[Any]]) -> None:
        rows = [list(r) for r in rows]
        if rows:
            self.conn.cursor().executemany(self._sql(text), rows)


class Database:
    """The store at `location` (a path or URL, see `store.url`), with no connection yet: cheap to
    construct, safe to pickle (connections are per process and thread, opened on first use).
    `open` checks or creates its schema. read_only: nothing is written through this object.
    retry_seconds: see `ResultsStore`."""

    def __init__(self, location: str | os.PathLike, *, read_only: bool = False, retry_seconds: float | None = None):
        self.read_only = read_only
        self.retry_seconds = default_retry_seconds() if retry_seconds is None else retry_seconds
        self._bind(parse_store_url(location))

    def _bind(self, where: StoreURL) -> None:
        self.url, self.location, self.backend = where.url, where.shown, where.backend
        self._db = _backend(where)
        self.path = self._db.path  # the SQLite file; None for a server
        self._local = threading.local()

    def __getstate__(self) -> dict:
        return {"url": self.url, "read_only": self.read_only, "retry_seconds": self.retry_seconds}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({"read_only": False, "retry_seconds": default_retry_seconds(), **state})
        self._bind(parse_store_url(self.url))

    def open(self, *, create: bool, journal_mode: str) -> str | None:
        """Check the store's schema, or create the store if absent (and `create`); returns the backup's
        path when an older store was migrated. StoreError (one line) when it is not usable."""
        return self._db.open(read_only=self.read_only, create=create, journal_mode=journal_mode)

    def error(self, problem: str) -> StoreError:
        """A StoreError about this store: `results store LOCATION: problem`."""
        return StoreError(f"results store {self.location}: {problem}")

    # ---- connections

    def connection(self) -> Any:
        """This process's (and thread's) connection, reopened after a fork (the parent's is left alone)."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid() or local.conn is None:
            local.conn, local.pid = None, None
            local.conn = self._db.connect(self.read_only)
            local.pid = os.getpid()
        return local.conn

    def close(self) -> None:
        """Close this thread's connection (reopened on next use)."""
        local = self._local
        if getattr(local, "pid", None) == os.getpid() and local.conn is not None:
            self._db.disconnect(local.conn)
        local.conn, local.pid = None, None

    # ---- transactions

    def _attempt(self, work: Callable[[Transaction], Any], writing: bool, snapshot: bool = False) -> Any:
        """Run `work(transaction)`; when `writing`, inside BEGIN … COMMIT as the backend
        serialises writes; when `snapshot`, in one read transaction (every SELECT sees the
        same state). Retried with backoff while the database is locked, conflicting
        or unreachable; a lost connection is reopened."""
        delay, deadline = 0.05, None
        while True:
            conn = None
            try:
                conn = self.connection()
                if writing or snapshot:
                    conn.execute(self._db.begin if writing else self._db.begin_read)
                result = work(Transaction(conn, self._db.sql))
                if writing or snapshot:
                    conn.execute("COMMIT")
                if _UNREACHABLE:
                    _UNREACHABLE.pop(self.url, None)  # reachable again: a later outage gets its own window
                return result
            except self._db.errors as err:
                if conn is not None:
                    self._db.rollback(conn)
                    if self._db.lost(conn):
                        self.close()
                reason = self._db.transient(err)
                if reason is None:
                    raise self._db.failure(err, writing) from None
                now = time.monotonic()
                if reason.startswith("unreachable"):  # one window for the whole process, said once
                    if self.url not in _UNREACHABLE:
                        _UNREACHABLE[self.url] = now
                        print(f"warning: results store {self.location} is {redact(reason)}; retrying for up to "
                              f"{self.retry_seconds:.0f} s", file=sys.stderr, flush=True)
                    deadline = _UNREACHABLE[self.url] + self.retry_seconds
                else:
                    deadline = deadline or now + self.retry_seconds
                if now >= deadline:
                    raise self.error(f"still {reason} after {self.retry_seconds:.0f} s of retries") from None
                time.sleep(min(delay * (1 + random.random()), deadline - now))
                delay = min(delay * 2, 10.0)
            except BaseException:
                if conn is not None:
                    self._db.rollback(conn)
                raise

    def write(self, transaction: Callable[..., Any], *args: Any) -> Any:
        """Run `transaction(tx, *args)` as one write transaction; returns what it returns."""
        return self._attempt(lambda tx: transaction(tx, *args), writing=True)

    def query(self, sql: str, params: Iterable[Any] = ()) -> tuple[list[str], list[tuple]]:
        """(column names, rows) of one SELECT."""
        return self.snapshot([(sql, params)])[0]

    def snapshot(self, queries: Iterable[tuple[str, Iterable[Any]]]) -> list[tuple[list[str], list[tuple]]]:
        """(column names, rows) of each (SELECT, params), all read in one transaction."""
        queries = list(queries)

        def work(tx):
            results = []
            for sql, params in queries:
                cursor = tx.execute(sql, params)
                results.append(([d[0] for d in cursor.description], cursor.fetchall()))
            return results

        return self._attempt(work, writing=False, snapshot=len(queries) > 1)

    def read(self, sql: str, params: Iterable[Any] = ()) -> pd.DataFrame:
        """One SELECT as a DataFrame."""
        columns, rows = self.query(sql, params)
        return pd.DataFrame.from_records(rows, columns=columns, coerce_float=True)  # as pandas.read_sql does

    def fetchone(self, sql: str, params: Iterable[Any] = ()) -> tuple | None:
        """The first row of one SELECT, or None."""
        rows = self.query(sql, params)[1]
        return tuple(rows[0]) if rows else None
