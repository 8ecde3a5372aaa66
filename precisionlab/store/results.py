"""The results store: one SQLite file holding sweeps, runs, per-step metrics,
checkpoints and sharpness values, readable as pandas DataFrames.

    store = ResultsStore("results/precisionlab.db")
    rid = run_id(cfg)                        # hash of the run's semantic config
    if store.claim_run(rid, cfg, sweep="bits"):   # False: done already, or running elsewhere
        with store.recorder(rid) as rec:     # a `precisionlab.train.recorder.Recorder`
            run(cfg, recorder=rec)       # resume from store.latest_checkpoint(rid)
    store.runs(sweep="bits"); store.metrics(sweep="bits", split="val")

Why it is shaped this way:
- Many writers (joblib workers, Slurm jobs): WAL journal (readers never block
  the writer), a 60 s busy timeout, short `BEGIN IMMEDIATE` transactions (no
  read-to-write lock upgrades, which the busy timeout cannot wait out), and a
  retry with backoff around each transaction. WAL needs every writer on one
  host: for jobs on several nodes sharing a network file system, create the
  store with `journal_mode="delete"` (rollback journal, file locks).
- Per-step overhead stays small: the recorder buffers metric rows and writes
  them in one transaction every `flush_every` rows or `flush_seconds`, and
  always before recording a checkpoint and with the outcome, so a resumed run
  never misses a row from before its checkpoint.
- Killed processes lose nothing: a run is `running` until `finish` writes its
  outcome and last rows in one transaction, so an interrupted run never shows
  as completed. A `running` row is *interrupted* (rerunnable) when its process
  is gone: on the same host, when its pid is not alive (or is this very
  process, which no longer holds the claim); on any host, when its heartbeat
  (refreshed at every write) is older than `stale_after` seconds.
- A rerun keeps its rows up to its last checkpoint and drops later ones (the
  resumed run logs them again); `force=True` drops all of the run's rows.
- Connections are opened lazily, one per process and thread, and reopened
  after a fork: a sqlite3 connection must never cross a fork.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from precisionlab.store.identity import canonical, dumps, run_id
from precisionlab.store.migrate import MIGRATIONS, migrate
from precisionlab.store.recorder import LIVE_CLAIMS, StoreRecorder
from precisionlab.store.schema import (
    CONFIG_COLUMNS,
    DDL,
    DONE,
    SCHEMA_VERSION,
    TIME_COLUMNS,
    StoreError,
    finite,
)

__all__ = ["ResultsStore", "StoreError", "DEFAULT_STORE_PATH"]

DEFAULT_STORE_PATH = "results/precisionlab.db"
BUSY_TIMEOUT_S = 60.0
RETRIES = 8  # after the busy timeout itself gave up; ~8 minutes in all

# Who measures which sharpness value now (see `claim_sharpness`); rows live only while a value is measured.
_SHARPNESS_CLAIMS = ("CREATE TABLE IF NOT EXISTS sharpness_claims (run_id TEXT NOT NULL, step INTEGER NOT NULL, "
                     "metric TEXT NOT NULL, params TEXT NOT NULL, pid INTEGER, hostname TEXT, claimed REAL, "
                     "PRIMARY KEY (run_id, step, metric, params)) WITHOUT ROWID")
_SQLITE_HEADER = b"SQLite format 3\x00"
_HOST = socket.gethostname()
# Connections this process opened per store path and has not closed (those of other threads, and
# those left to the garbage collector, are never subtracted: the count errs on the side of "open").
_CONNECTED: Counter[str] = Counter()


def _lookup(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    if isinstance(node, Mapping):
        node = node.get("format", node.get("name"))
    return node


def _config_columns(config: Mapping[str, Any]) -> dict[str, Any]:
    columns = {}
    for column, paths in CONFIG_COLUMNS.items():
        found = (_lookup(config, p) for p in paths)
        columns[column] = next((v for v in found if isinstance(v, (str, int, float))), None)
    return columns


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host still runs (a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """A killed process its parent has not reaped yet still answers kill(pid, 0) (Linux only)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:  # a damaged file may refuse even that; the connection is dropped anyway
        pass


def _parse_json(column: pd.Series) -> list:
    return [json.loads(v) if isinstance(v, str) else None for v in column]


# --------------------------------------------------------------------------- the store


class ResultsStore:
    """One SQLite results store at `path`; cheap to construct, safe to pickle
    (connections are per process and opened on first use)."""

    def __init__(self, path: str | os.PathLike = DEFAULT_STORE_PATH, *, journal_mode: str = "wal",
                 stale_after: float = 600.0, read_only: bool = False):
        """Open the store at `path`, creating it (and missing parent folders) if absent.

        journal_mode: "wal" (default; all writers on one host) or "delete"
            (writers on several hosts sharing a network file system); only
            used when the store is created.
        stale_after: seconds without a heartbeat after which a `running` run
            is considered interrupted, whatever host ran it.
        read_only: for readers (`precisionlab report`): a store the user may
            not write is accepted; nothing is written through this object.
        Raises StoreError when the path is not usable as a store.
        """
        if journal_mode not in ("wal", "delete"):
            raise ValueError(f"journal_mode must be 'wal' or 'delete', not {journal_mode!r}")
        self.path = os.path.abspath(os.fspath(path))
        self.stale_after = stale_after
        self.read_only = read_only
        self._local = threading.local()
        self._claims: dict[str, str] = {}  # run_id -> claim token held through this object
        self.migrated_from: str | None = None  # the backup's path, when opening migrated an older store
        if os.path.exists(self.path):
            self._check_existing()
        else:
            self._create(journal_mode)

    # ---- opening

    def _error(self, problem: str) -> StoreError:
        return StoreError(f"results store {self.path}: {problem}")

    def _damaged(self, err: BaseException) -> StoreError:
        """SQLite failing on the file itself (a torn or overwritten page): what to do, in one line."""
        return self._error(f"cannot be read as SQLite ({str(err).splitlines()[0]}): the file is damaged; "
                           "move it aside (or restore a backup) and rerun")

    def _check_existing(self) -> None:
        """Judge an existing file. Its header is read with open() only while this process has no
        SQLite connection to it: closing any descriptor of a file drops every POSIX lock the
        process holds on it, so an open connection would lose its locks and another process
        could delete its -wal/-shm under it (SQLite's "How to corrupt", 2.2). Otherwise SQLite
        alone judges the file."""
        if os.path.isdir(self.path):
            raise self._error("is a directory, expected an SQLite file (set store.path to a file name)")
        if not os.path.isfile(self.path):
            raise self._error("is not a regular file (expected a precisionlab results store or a new path)")
        if not _CONNECTED[self.path]:  # no connection to it here: reading the header drops no lock
            try:
                with open(self.path, "rb") as f:
                    header = f.read(len(_SQLITE_HEADER))
            except OSError as err:
                raise self._error(f"cannot be read ({err.strerror})") from None
            if header != _SQLITE_HEADER:  # an empty file too, which SQLite would take for an empty database
                raise self._error("is not an SQLite database (expected a precisionlab results store or a new path)")
        try:
            self._check_schema()
        except BaseException:
            self.close()  # leaves no -wal/-shm files behind
            raise

    def _check_schema(self) -> None:
        try:
            tables = {r[0] for r in self._conn().execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "meta" not in tables:
                raise self._error("is an SQLite database but not a precisionlab results store (no meta table)")
            row = self._conn().execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as err:
            raise self._damaged(err) from None
        found = row[0] if row else None
        if str(found).isdigit() and int(found) > SCHEMA_VERSION:
            raise self._error(f"has schema version {found}, newer than this precisionlab reads "
                              f"({SCHEMA_VERSION}); upgrade precisionlab")
        if str(found).isdigit() and int(found) in MIGRATIONS:
            if not os.access(self.path, os.W_OK):
                raise self._error(f"has schema version {found}, older than this precisionlab's ({SCHEMA_VERSION}), "
                                  "and is not writable, so it cannot be migrated; make it writable and rerun")
            self.close()
            self.migrated_from = migrate(self.path, BUSY_TIMEOUT_S)
            found = self._conn().execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
        if str(found) != str(SCHEMA_VERSION):
            raise self._error(f"has unknown schema version {found!r} (this precisionlab reads {SCHEMA_VERSION})")
        if not self.read_only and not os.access(self.path, os.W_OK):
            raise self._error("is not writable")

    def _create(self, journal_mode: str) -> None:
        """Build the schema in a temporary file, then link it into place: no
        partial or empty store is ever visible, and concurrent creators agree.
        Missing folders are created, and removed again if creation fails."""
        if self.read_only:
            raise self._error("does not exist; run precisionlab sweep first or pass --store PATH")
        self._remove_stale_temp_files()
        missing, parent = [], os.path.dirname(self.path)
        while not os.path.exists(parent):
            missing.append(parent)
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise self._error(f"cannot be created: {parent} is not a folder")
        tmp = f"{self.path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        made = []  # folders this call created, to remove on failure
        try:
            for folder in reversed(missing):
                try:
                    os.mkdir(folder)
                    made.insert(0, folder)
                except FileExistsError:  # a concurrent creator was faster
                    if not os.path.isdir(folder):
                        raise
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                conn.execute(f"PRAGMA journal_mode={journal_mode}")
                conn.executescript(f"BEGIN; {DDL} COMMIT;")
            finally:
                conn.close()
            try:
                os.link(tmp, self.path)  # fails if another process created it meanwhile
            except FileExistsError:
                pass
        except (OSError, sqlite3.Error) as err:
            for leftover in (tmp, tmp + "-wal", tmp + "-shm", tmp + "-journal", *made):
                if os.path.isdir(leftover):
                    os.rmdir(leftover)
                elif os.path.exists(leftover):
                    os.unlink(leftover)
            reason = getattr(err, "strerror", None) or str(err)
            raise self._error(f"cannot be created ({reason}); choose a writable store.path") from None
        os.unlink(tmp)
        self._check_existing()

    def _remove_stale_temp_files(self) -> None:
        """A creator killed before linking its temporary file into place leaves
        `NAME.PID.HEX.tmp` (and its -wal/-shm/-journal) behind: remove those of dead processes."""
        folder, prefix = os.path.dirname(self.path), os.path.basename(self.path) + "."
        try:
            names = os.listdir(folder)
        except OSError:
            return
        for name in names:
            match = re.fullmatch(re.escape(prefix) + r"(\d+)\.[0-9a-f]{8}\.tmp(-wal|-shm|-journal)?", name)
            if match and not _pid_alive(int(match[1])):
                try:
                    os.unlink(os.path.join(folder, name))
                except OSError:  # another opener removed it first
                    pass

    def _conn(self) -> sqlite3.Connection:
        """This process's (and thread's) connection, reopened after a fork."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            try:
                if self.read_only:  # mode=ro: SQLite itself refuses every write through this connection
                    local.conn = sqlite3.connect(f"{Path(self.path).as_uri()}?mode=ro", uri=True,
                                                 isolation_level=None, timeout=BUSY_TIMEOUT_S)
                else:
                    local.conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
                    local.conn.execute("PRAGMA synchronous=NORMAL")  # durable against process kills in WAL mode
            except sqlite3.DatabaseError as err:
                raise self._damaged(err) from None
            local.pid = os.getpid()
            _CONNECTED[self.path] += 1
        return local.conn

    def close(self) -> None:
        """Close this process's connection (reopened on next use)."""
        if getattr(self._local, "pid", None) == os.getpid():
            self._local.conn.close()
            _CONNECTED[self.path] -= 1
        self._local = threading.local()

    def __getstate__(self) -> dict:
        return {"path": self.path, "stale_after": self.stale_after, "read_only": self.read_only}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({"read_only": False, **state})
        self._local = threading.local()
        self._claims = {}

    def _write(self, transaction, *args):
        """Run `transaction(conn, *args)` inside BEGIN IMMEDIATE … COMMIT,
        retrying with backoff while the database is locked."""
        delay = 0.05
        for attempt in range(RETRIES + 1):
            conn = self._conn()
            try:
                conn.execute("BEGIN IMMEDIATE")
                result = transaction(conn, *args)
                conn.execute("COMMIT")
                return result
            except sqlite3.OperationalError as err:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                busy = "locked" in str(err) or "busy" in str(err)
                if not busy:
                    raise self._error(f"write failed ({err})") from None
                if attempt == RETRIES:
                    raise self._error(f"still locked after {RETRIES} retries ({err})") from None
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 30.0)
            except sqlite3.DatabaseError as err:  # not a lock: the file is damaged
                _rollback(conn)
                raise self._damaged(err) from None
            except BaseException:
                _rollback(conn)
                raise

    def _read(self, sql: str, params: Iterable[Any] = ()) -> pd.DataFrame:
        try:
            return pd.read_sql_query(sql, self._conn(), params=list(params))
        except (sqlite3.DatabaseError, pd.errors.DatabaseError) as err:  # pandas wraps it, SQL text and all
            raise self._damaged(err.__cause__ or err) from None

    def _fetchone(self, sql: str, params: Iterable[Any] = ()) -> tuple | None:
        try:
            return self._conn().execute(sql, list(params)).fetchone()
        except sqlite3.DatabaseError as err:
            raise self._damaged(err) from None

    # ---- sweeps and runs

    def add_sweep(self, name: str, *, command: str | None = None, grid: Any = None) -> None:
        """Record a sweep (or update the command and grid of an existing one)."""
        grid_json = None if grid is None else dumps(canonical(grid, semantic=False))
        self._write(lambda c: c.execute(
            "INSERT INTO sweeps VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
            "command=excluded.command, grid=excluded.grid", (name, time.time(), command, grid_json)))

    def _ensure_run(self, conn: sqlite3.Connection, rid: str, config: Mapping[str, Any], sweep: str | None) -> None:
        cols = _config_columns(config)
        conn.execute(
            "INSERT INTO runs (run_id, config, model, format_x, format_w, format_grad, rounding, lr, seed, "
            "status, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?) ON CONFLICT(run_id) DO NOTHING",
            (rid, dumps(canonical(config, semantic=False)), *(finite(cols[k]) for k in CONFIG_COLUMNS),
             time.time()))
        if sweep is not None:
            conn.execute("INSERT INTO sweeps (name, created) VALUES (?, ?) ON CONFLICT(name) DO NOTHING",
                         (sweep, time.time()))
            conn.execute("INSERT OR IGNORE INTO sweep_runs VALUES (?, ?)", (sweep, rid))

    def register_runs(self, configs: Iterable[Mapping[str, Any]], *, sweep: str | None = None) -> list[str]:
        """Record runs as `pending` (if new) in one transaction, linked to `sweep`; returns their ids."""
        configs = list(configs)
        ids = [run_id(c) for c in configs]

        def transaction(conn):
            for rid, config in zip(ids, configs):
                self._ensure_run(conn, rid, config, sweep)

        self._write(transaction)
        return ids

    def _alive(self, pid: int | None, hostname: str | None, heartbeat: float | None, token: str | None,
               now: float) -> bool:
        """The liveness rule for a `running` row (see the module docstring)."""
        if heartbeat is None or now - heartbeat > self.stale_after:
            return False
        if hostname == _HOST and pid is not None:
            if pid == os.getpid():
                return token in LIVE_CLAIMS
            return _pid_alive(pid)
        return True

    def claim_run(self, run_id: str, config: Mapping[str, Any], sweep: str | None = None, *,
                  force: bool = False) -> bool:
        """Decide whether this process must compute the run, and if so mark it `running` by us.

        completed/diverged -> False (skip) unless `force`; running in a live
        process -> False (even with `force`); new, pending, failed or
        interrupted -> True. A rerun keeps metrics up to the run's last
        checkpoint (resume from `latest_checkpoint`); `force` clears all its
        metrics, checkpoints and sharpness rows. Then use `recorder(run_id)`.
        """

        def transaction(conn):
            self._ensure_run(conn, run_id, config, sweep)
            status, pid, host, heartbeat, token = conn.execute(
                "SELECT status, pid, hostname, heartbeat, claim FROM runs WHERE run_id=?", (run_id,)).fetchone()
            now = time.time()
            if status == "running" and self._alive(pid, host, heartbeat, token, now):
                return None
            if status in DONE and not force:
                return None
            if force:
                for table in ("metrics", "checkpoints", "sharpness"):
                    conn.execute(f"DELETE FROM {table} WHERE run_id=?", (run_id,))
            else:
                last = conn.execute("SELECT MAX(step) FROM checkpoints WHERE run_id=?", (run_id,)).fetchone()[0]
                conn.execute("DELETE FROM metrics WHERE run_id=? AND step>?", (run_id, -1 if last is None else last))
            token = uuid.uuid4().hex
            conn.execute(
                "UPDATE runs SET status='running', started=?, heartbeat=?, finished=NULL, wall_time=NULL, "
                "pid=?, hostname=?, claim=?, attempts=attempts+1, error=NULL, steps_done=NULL, "
                "final_train_loss=NULL, final_val_loss=NULL, min_val_loss=NULL, initial_loss=NULL, "
                "diverged_step=NULL, spikes=NULL WHERE run_id=?",
                (now, now, os.getpid(), _HOST, token, run_id))
            return token

        token = self._write(transaction)
        if token is None:
            return False
        self._claims[run_id] = token
        LIVE_CLAIMS.add(token)
        return True

    def recorder(self, run_id: str, *, flush_every: int = 256, flush_seconds: float = 30.0) -> "StoreRecorder":
        """The `Recorder` for a run this object claimed with `claim_run`."""
        if run_id not in self._claims:
            raise RuntimeError(f"run {run_id} was not claimed through this store; call claim_run first")
        return StoreRecorder(self, run_id, self._claims[run_id], flush_every, flush_seconds)

    def fail_pending(self, run_id: str, error: str) -> bool:
        """Record a run that failed before it was claimed (its job could not start it) as
        `failed` with `error`, so it does not look unstarted; True if the run was `pending`."""
        return bool(self._write(lambda c: c.execute(
            "UPDATE runs SET status='failed', error=?, finished=? WHERE run_id=? AND status='pending'",
            (error, time.time(), run_id)).rowcount))

    def latest_checkpoint(self, run_id: str) -> tuple[int, str] | None:
        """(step, path) of the run's last recorded checkpoint, or None."""
        return self._fetchone("SELECT step, path FROM checkpoints WHERE run_id=? ORDER BY step DESC LIMIT 1", (run_id,))

    def status(self, run_id: str) -> str | None:
        """The run's status, or None if the store has no such run."""
        row = self._fetchone("SELECT status FROM runs WHERE run_id=?", (run_id,))
        return row and row[0]

    def running(self, run_ids: Iterable[str]) -> tuple[set[str], set[str]]:
        """The `running` runs among `run_ids`, split by the liveness rule: (in a live process, interrupted)."""
        where, params = self._where(run_ids, None)
        rows = self._read(f"SELECT run_id, pid, hostname, heartbeat, claim FROM runs t "
                          f"WHERE {where} AND status='running'", params)
        now, alive, interrupted = time.time(), set(), set()
        for rid, pid, host, heartbeat, token in rows.itertuples(index=False):
            pid = None if pid is None or pid != pid else int(pid)  # NULL arrives as NaN
            (alive if self._alive(pid, host, heartbeat, token, now) else interrupted).add(rid)
        return alive, interrupted

    def add_sharpness(self, run_id: str, step: int, metric: str, value: float,
                      params: Mapping[str, Any] | None = None) -> None:
        """Record (or replace) one sharpness value of a run at a step."""
        self._write(lambda c: c.execute(
            "INSERT INTO sharpness VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(run_id, step, metric, params) "
            "DO UPDATE SET value=excluded.value, created=excluded.created",
            (run_id, step, metric, dumps(dict(params or {})), finite(value), time.time())))

    def claim_sharpness(self, run_id: str, step: int, metric: str, params: Mapping[str, Any] | None = None) -> str:
        """Decide whether this process measures one sharpness value, so concurrent
        `precisionlab sharpness` processes never compute it twice: "done" (the store has
        it), "busy" (a live process claimed it), or "claimed" (ours now; `add_sharpness`
        then `release_sharpness`). A claim of a dead process, or one older than
        `stale_after` from another host, is taken over."""
        key = (run_id, step, metric, dumps(dict(params or {})))

        def transaction(conn):
            conn.execute(_SHARPNESS_CLAIMS)  # created on first use: older stores get it too
            if conn.execute("SELECT 1 FROM sharpness WHERE run_id=? AND step=? AND metric=? AND params=?",
                            key).fetchone():
                return "done"
            row = conn.execute("SELECT pid, hostname, claimed FROM sharpness_claims WHERE run_id=? AND step=? "
                               "AND metric=? AND params=?", key).fetchone()
            now = time.time()
            if row and row[0] != os.getpid():
                # this host: the claimer's pid decides (a Hessian may take longer than stale_after);
                # another host: the claim's age
                alive = _pid_alive(row[0]) if row[1] == _HOST else now - row[2] <= self.stale_after
                if alive:
                    return "busy"
            conn.execute("INSERT OR REPLACE INTO sharpness_claims VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (*key, os.getpid(), _HOST, now))
            return "claimed"

        return self._write(transaction)

    def release_sharpness(self, run_id: str, step: int, metric: str, params: Mapping[str, Any] | None = None) -> None:
        """Drop this process's claim on a sharpness value (measured, or given up)."""
        self._write(lambda c: c.execute(
            "DELETE FROM sharpness_claims WHERE run_id=? AND step=? AND metric=? AND params=? AND pid=? AND hostname=?",
            (run_id, step, metric, dumps(dict(params or {})), os.getpid(), _HOST)))

    # ---- pandas accessors

    @staticmethod
    def _where(run_ids: Iterable[str] | None, sweep: str | None, alias: str = "t") -> tuple[str, list]:
        clauses, params = [], []
        if run_ids is not None:
            run_ids = [run_ids] if isinstance(run_ids, str) else list(run_ids)
            clauses.append(f"{alias}.run_id IN ({','.join('?' * len(run_ids))})")
            params += run_ids
        if sweep is not None:
            clauses.append(f"{alias}.run_id IN (SELECT run_id FROM sweep_runs WHERE sweep=?)")
            params.append(sweep)
        return " AND ".join(clauses) or "1", params

    @staticmethod
    def _times(df: pd.DataFrame) -> pd.DataFrame:
        for column in TIME_COLUMNS:
            if column in df:
                df[column] = pd.to_datetime(df[column], unit="s", utc=True)
        return df

    def sweeps(self) -> pd.DataFrame:
        """One row per sweep: name, created, command, grid (parsed JSON), runs (count)."""
        df = self._read("SELECT s.*, (SELECT COUNT(*) FROM sweep_runs l WHERE l.sweep=s.name) AS runs "
                        "FROM sweeps s ORDER BY created")
        df["grid"] = _parse_json(df["grid"])
        return self._times(df)

    def sweep_name(self, name: str | None = None) -> str:
        """`name` if the store holds that sweep; with None, the latest sweep. StoreError otherwise."""
        names = list(self.sweeps()["name"])
        if not names:
            raise StoreError(f"results store {self.path} holds no sweeps; run precisionlab sweep first")
        name = names[-1] if name is None else name
        if name not in names:
            raise StoreError(f"unknown sweep {name!r} in {self.path}; sweeps there: {', '.join(names)}")
        return name

    def runs(self, sweep: str | None = None, status: str | Iterable[str] | None = None, *,
             expand_config: bool = False) -> pd.DataFrame:
        """One row per run (of `sweep`, with `status`): the runs table, `config`
        and `meta` parsed into dicts; `expand_config=True` adds one column per
        config leaf, named "config.<dotted path>"."""
        where, params = self._where(None, sweep)
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            where += f" AND t.status IN ({','.join('?' * len(statuses))})"
            params += statuses
        df = self._read(f"SELECT * FROM runs t WHERE {where} ORDER BY created, run_id", params)
        df = df.drop(columns=["claim"])
        for column in ("config", "meta"):
            df[column] = _parse_json(df[column])
        if expand_config and len(df):
            flat = pd.json_normalize(list(df["config"])).add_prefix("config.")
            df = pd.concat([df, flat.set_index(df.index)], axis=1)
        return self._times(df)

    def metrics(self, run_ids: str | Iterable[str] | None = None, sweep: str | None = None,
                split: str | None = None) -> pd.DataFrame:
        """Per-step metrics (run_id, step, split, loss, lr, grad_norm, tokens, elapsed, extra)."""
        where, params = self._where(run_ids, sweep)
        if split is not None:
            where += " AND t.split=?"
            params.append(split)
        return self._read(f"SELECT * FROM metrics t WHERE {where} ORDER BY run_id, split, step", params)

    def checkpoints(self, run_ids: str | Iterable[str] | None = None, sweep: str | None = None) -> pd.DataFrame:
        where, params = self._where(run_ids, sweep)
        return self._times(self._read(f"SELECT * FROM checkpoints t WHERE {where} ORDER BY run_id, step", params))

    def sharpness(self, run_ids: str | Iterable[str] | None = None, sweep: str | None = None,
                  metric: str | None = None) -> pd.DataFrame:
        """Sharpness values; `params` parsed into dicts."""
        where, params = self._where(run_ids, sweep)
        if metric is not None:
            where += " AND t.metric=?"
            params.append(metric)
        df = self._read(f"SELECT * FROM sharpness t WHERE {where} ORDER BY run_id, metric, step", params)
        df["params"] = _parse_json(df["params"])
        return self._times(df)


