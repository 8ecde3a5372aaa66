"""The results store: one SQLite file holding sweeps, runs, per-step metrics,
checkpoints and sharpness values, readable as pandas DataFrames.

    store = ResultsStore("results/precisionlab.db")
    rid = run_id(cfg)                        # hash of the run's semantic config
    if store.claim_run(rid, cfg, sweep="bits"):   # False: done already, or running elsewhere
        with store.recorder(rid) as rec:     # a `precisionlab.recorder.Recorder`
            train.run(cfg, recorder=rec)     # resume from store.latest_checkpoint(rid)
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

import hashlib
import json
import math
import os
import random
import socket
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from importlib import metadata
from typing import Any

import pandas as pd

__all__ = ["ResultsStore", "StoreRecorder", "StoreError", "run_id", "DEFAULT_STORE_PATH", "NON_SEMANTIC_KEYS"]

SCHEMA_VERSION = 1
DEFAULT_STORE_PATH = "results/precisionlab.db"
STATUSES = ("pending", "running", "completed", "diverged", "failed")
OUTCOMES = ("completed", "diverged", "failed")
DONE = ("completed", "diverged")  # never recomputed unless forced

# Config keys that do not change what a run computes, so they are left out of
# its id: the same run in two sweeps, on another machine or writing elsewhere
# is one run. A dotted name drops that exact path ("checkpoint.dir"); a plain
# name drops that key at any depth ("device" drops "train.device" too).
NON_SEMANTIC_KEYS = frozenset({
    "hydra", "store", "sweep", "paths", "launcher",  # where and as part of what it runs
    "output_dir", "out_dir", "checkpoint_dir", "checkpoint.dir", "log_dir",
    "device", "threads", "num_threads", "torch_threads",  # where and how fast, not what it trains
    "progress", "verbose", "resume", "force", "jobs",
    "sharpness",  # what training measures on the side (sharpness.every), never the curve it trains
})

# Where the runs table's columns come from in a run's config: the first
# present dotted path wins; absent everywhere -> NULL. A format given as a
# mapping contributes its "format" (or "name") entry.
CONFIG_COLUMNS = {
    "model": ("model.name", "model.preset", "model.arch", "model"),
    "format_x": ("precision.x.format", "precision.x", "precision.formats.x", "precision.format", "precision.name"),
    "format_w": ("precision.w.format", "precision.w", "precision.formats.w", "precision.format", "precision.name"),
    "format_grad": ("precision.grad.format", "precision.grad", "precision.formats.grad", "precision.format", "precision.name"),
    "rounding": ("precision.rounding",),
    "lr": ("optim.lr", "lr"),
    "seed": ("seed",),
}

# What `Recorder.finish(outcome)` may carry (absent -> derived from the logged
# metrics where possible, else NULL).
OUTCOME_KEYS = ("steps_done", "final_train_loss", "final_val_loss", "min_val_loss",
                "initial_loss", "diverged_step", "spikes", "error", "wall_time")
METRIC_KEYS = ("loss", "lr", "grad_norm", "tokens", "elapsed")
TIME_COLUMNS = ("created", "started", "heartbeat", "finished")

BUSY_TIMEOUT_S = 60.0
RETRIES = 8  # after the busy timeout itself gave up; ~8 minutes in all

_SCHEMA = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sweeps (
    name    TEXT PRIMARY KEY,
    created REAL NOT NULL,      -- unix time of the first invocation
    command TEXT,               -- command line / overrides of the latest invocation
    grid    TEXT                -- JSON description of the grid
);
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,    -- run_id(config)
    config TEXT NOT NULL,       -- JSON, the resolved config
    model TEXT, format_x TEXT, format_w TEXT, format_grad TEXT, rounding TEXT, lr REAL, seed INTEGER,
    status TEXT NOT NULL CHECK (status IN {STATUSES}),
    steps_done INTEGER, final_train_loss REAL, final_val_loss REAL, min_val_loss REAL,
    initial_loss REAL, diverged_step INTEGER, spikes INTEGER, error TEXT,
    created REAL NOT NULL, started REAL, heartbeat REAL, finished REAL, wall_time REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    pid INTEGER, hostname TEXT, claim TEXT,  -- who runs it now (see the liveness rule)
    git_rev TEXT, torch_version TEXT, triton_version TEXT, precisionlab_version TEXT,
    meta TEXT                   -- JSON from Recorder.start: data fingerprint, device, ...
);
CREATE TABLE sweep_runs (
    sweep  TEXT NOT NULL REFERENCES sweeps(name),
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    PRIMARY KEY (sweep, run_id)
) WITHOUT ROWID;
CREATE TABLE metrics (
    run_id TEXT NOT NULL, step INTEGER NOT NULL, split TEXT NOT NULL,
    loss REAL, lr REAL, grad_norm REAL, tokens INTEGER, elapsed REAL,
    extra TEXT,                 -- JSON of any other logged values
    PRIMARY KEY (run_id, step, split)
) WITHOUT ROWID;
CREATE TABLE checkpoints (
    run_id TEXT NOT NULL, step INTEGER NOT NULL, path TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (run_id, step)
) WITHOUT ROWID;
CREATE TABLE sharpness (
    run_id TEXT NOT NULL, step INTEGER NOT NULL, metric TEXT NOT NULL,
    params TEXT NOT NULL,       -- canonical JSON of the metric's parameters (eps, ...)
    value REAL, created REAL NOT NULL,
    PRIMARY KEY (run_id, step, metric, params)
) WITHOUT ROWID;
CREATE INDEX runs_status ON runs(status);
INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');
"""

_SQLITE_HEADER = b"SQLite format 3\x00"
_HOST = socket.gethostname()
_LIVE_CLAIMS: set[str] = set()  # claim tokens this process holds and has not finished


class StoreError(ValueError):
    """A results store that cannot be used: one line naming the path and the problem."""


# --------------------------------------------------------------------------- run identity


def _canonical(value: Any, path: str = "", *, semantic: bool = True) -> Any:
    """JSON-ready plain copy of a config (dicts, DictConfigs, lists, scalars),
    without the non-semantic keys when `semantic`."""
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            dotted = f"{path}.{key}" if path else str(key)
            if semantic and (str(key) in NON_SEMANTIC_KEYS or dotted in NON_SEMANTIC_KEYS):
                continue
            out[str(key)] = _canonical(item, dotted, semantic=semantic)
        return out
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_canonical(item, path, semantic=semantic) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)  # paths, enums, dtypes


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def run_id(config: Mapping[str, Any]) -> str:
    """Stable id of a run: first 16 hex digits of sha256 over the canonical JSON
    (sorted keys) of its config without `NON_SEMANTIC_KEYS`."""
    return hashlib.sha256(_dumps(_canonical(config)).encode()).hexdigest()[:16]


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


# --------------------------------------------------------------------------- provenance


@cache
def _provenance() -> dict[str, str | None]:
    """git revision of the precisionlab checkout ("-dirty" if modified) and package versions."""

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=os.path.dirname(os.path.abspath(__file__)),
                                  capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    rev = git("rev-parse", "HEAD")
    if rev and git("status", "--porcelain", "--untracked-files=no"):
        rev += "-dirty"
    return {"git_rev": rev, "torch_version": version("torch"), "triton_version": version("triton"),
            "precisionlab_version": version("precisionlab")}


def _is_zombie(pid: int) -> bool:
    """A killed process its parent has not reaped yet still answers kill(pid, 0) (Linux only)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _parse_json(column: pd.Series) -> list:
    return [json.loads(v) if isinstance(v, str) else None for v in column]


def _finite(x: Any) -> Any:
    """SQLite turns NaN into NULL silently; keep Inf, make NaN an explicit None."""
    return None if isinstance(x, float) and math.isnan(x) else x


# --------------------------------------------------------------------------- the store


class ResultsStore:
    """One SQLite results store at `path`; cheap to construct, safe to pickle
    (connections are per process and opened on first use)."""

    def __init__(self, path: str | os.PathLike = DEFAULT_STORE_PATH, *, journal_mode: str = "wal",
                 stale_after: float = 600.0):
        """Open the store at `path`, creating it (and missing parent folders) if absent.

        journal_mode: "wal" (default; all writers on one host) or "delete"
            (writers on several hosts sharing a network file system); only
            used when the store is created.
        stale_after: seconds without a heartbeat after which a `running` run
            is considered interrupted, whatever host ran it.
        Raises StoreError when the path is not usable as a store.
        """
        if journal_mode not in ("wal", "delete"):
            raise ValueError(f"journal_mode must be 'wal' or 'delete', not {journal_mode!r}")
        self.path = os.path.abspath(os.fspath(path))
        self.stale_after = stale_after
        self._local = threading.local()
        self._claims: dict[str, str] = {}  # run_id -> claim token held through this object
        if os.path.exists(self.path):
            self._check_existing()
        else:
            self._create(journal_mode)

    # ---- opening

    def _error(self, problem: str) -> StoreError:
        return StoreError(f"results store {self.path}: {problem}")

    def _check_existing(self) -> None:
        if os.path.isdir(self.path):
            raise self._error("is a directory, expected an SQLite file (set store.path to a file name)")
        try:
            with open(self.path, "rb") as f:
                header = f.read(len(_SQLITE_HEADER))
        except OSError as err:
            raise self._error(f"cannot be read ({err.strerror})") from None
        if header != _SQLITE_HEADER:
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
            raise self._error(f"cannot be read as SQLite ({err})") from None
        found = row[0] if row else None
        if str(found).isdigit() and int(found) > SCHEMA_VERSION:
            raise self._error(f"has schema version {found}, newer than this precisionlab reads "
                              f"({SCHEMA_VERSION}); upgrade precisionlab")
        if str(found) != str(SCHEMA_VERSION):
            raise self._error(f"has unknown schema version {found!r} (this precisionlab reads {SCHEMA_VERSION})")
        if not os.access(self.path, os.W_OK):
            raise self._error("is not writable")

    def _create(self, journal_mode: str) -> None:
        """Build the schema in a temporary file, then link it into place: no
        partial or empty store is ever visible, and concurrent creators agree.
        Missing folders are created, and removed again if creation fails."""
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
                conn.executescript(f"BEGIN; {_SCHEMA} COMMIT;")
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

    def _conn(self) -> sqlite3.Connection:
        """This process's (and thread's) connection, reopened after a fork."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            local.conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
            local.conn.execute("PRAGMA synchronous=NORMAL")  # durable against process kills in WAL mode
            local.pid = os.getpid()
        return local.conn

    def close(self) -> None:
        """Close this process's connection (reopened on next use)."""
        if getattr(self._local, "pid", None) == os.getpid():
            self._local.conn.close()
        self._local = threading.local()

    def __getstate__(self) -> dict:
        return {"path": self.path, "stale_after": self.stale_after}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
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
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _read(self, sql: str, params: Iterable[Any] = ()) -> pd.DataFrame:
        return pd.read_sql_query(sql, self._conn(), params=list(params))

    # ---- sweeps and runs

    def add_sweep(self, name: str, *, command: str | None = None, grid: Any = None) -> None:
        """Record a sweep (or update the command and grid of an existing one)."""
        grid_json = None if grid is None else _dumps(_canonical(grid, semantic=False))
        self._write(lambda c: c.execute(
            "INSERT INTO sweeps VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
            "command=excluded.command, grid=excluded.grid", (name, time.time(), command, grid_json)))

    def _ensure_run(self, conn: sqlite3.Connection, rid: str, config: Mapping[str, Any], sweep: str | None) -> None:
        cols = _config_columns(config)
        conn.execute(
            "INSERT INTO runs (run_id, config, model, format_x, format_w, format_grad, rounding, lr, seed, "
            "status, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?) ON CONFLICT(run_id) DO NOTHING",
            (rid, _dumps(_canonical(config, semantic=False)), *(_finite(cols[k]) for k in CONFIG_COLUMNS),
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
                return token in _LIVE_CLAIMS
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return not _is_zombie(pid)
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
        _LIVE_CLAIMS.add(token)
        return True

    def recorder(self, run_id: str, *, flush_every: int = 256, flush_seconds: float = 30.0) -> "StoreRecorder":
        """The `Recorder` for a run this object claimed with `claim_run`."""
        if run_id not in self._claims:
            raise RuntimeError(f"run {run_id} was not claimed through this store; call claim_run first")
        return StoreRecorder(self, run_id, self._claims[run_id], flush_every, flush_seconds)

    def latest_checkpoint(self, run_id: str) -> tuple[int, str] | None:
        """(step, path) of the run's last recorded checkpoint, or None."""
        return self._conn().execute(
            "SELECT step, path FROM checkpoints WHERE run_id=? ORDER BY step DESC LIMIT 1", (run_id,)).fetchone()

    def status(self, run_id: str) -> str | None:
        """The run's status, or None if the store has no such run."""
        row = self._conn().execute("SELECT status FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return row and row[0]

    def add_sharpness(self, run_id: str, step: int, metric: str, value: float,
                      params: Mapping[str, Any] | None = None) -> None:
        """Record (or replace) one sharpness value of a run at a step."""
        self._write(lambda c: c.execute(
            "INSERT INTO sharpness VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(run_id, step, metric, params) "
            "DO UPDATE SET value=excluded.value, created=excluded.created",
            (run_id, step, metric, _dumps(dict(params or {})), _finite(value), time.time())))

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


class StoreRecorder:
    """`precisionlab.recorder.Recorder` writing one claimed run into a ResultsStore.

    Metric rows are buffered and written every `flush_every` rows or
    `flush_seconds`, before each checkpoint row and with the outcome. Every
    write is guarded by the claim: if another process took the run over
    (this one was presumed dead), writing raises StoreError.
    As a context manager, a run that leaves without `finish` is recorded as
    failed (with the exception, if any).
    """

    def __init__(self, store: ResultsStore, run_id: str, token: str, flush_every: int, flush_seconds: float):
        self.store, self.run_id, self._token = store, run_id, token
        self.flush_every, self.flush_seconds = flush_every, flush_seconds
        self._rows: list[tuple] = []
        self._last_flush = time.monotonic()
        self.finished = False

    def _commit(self, transaction=None, **columns: Any) -> None:
        """One transaction: refresh the heartbeat and set `columns` if we still
        hold the claim, write the buffered rows, then run `transaction(conn)`."""

        def write(conn):
            assignments = "".join(f", {name}=?" for name in columns)
            held = conn.execute(f"UPDATE runs SET heartbeat=?{assignments} WHERE run_id=? AND claim=?",
                                (time.time(), *columns.values(), self.run_id, self._token)).rowcount
            if not held:
                raise self.store._error(f"run {self.run_id} is no longer claimed by this process "
                                        "(another process took it over as interrupted)")
            conn.executemany(
                "INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(run_id, step, split) DO UPDATE SET "
                "loss=excluded.loss, lr=excluded.lr, grad_norm=excluded.grad_norm, tokens=excluded.tokens, "
                "elapsed=excluded.elapsed, extra=excluded.extra", self._rows)
            if transaction is not None:
                transaction(conn)

        self.store._write(write)
        self._rows = []
        self._last_flush = time.monotonic()

    def flush(self) -> None:
        self._commit()

    # ---- the Recorder protocol

    def start(self, meta: Mapping[str, Any]) -> None:
        """Store `meta` (JSON) and provenance: meta's "git_rev" and "versions"
        ({"torch", "triton", "precisionlab"}) win over what is detected here."""
        versions = dict(meta.get("versions") or {})
        found = _provenance()
        columns = {
            "git_rev": meta.get("git_rev") or found["git_rev"],
            **{f"{name}_version": versions.get(name) or found[f"{name}_version"]
               for name in ("torch", "triton", "precisionlab")},
            "meta": _dumps({k: v for k, v in meta.items() if k != "config"}),
        }
        self._commit(**columns)

    def log(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        extra = {k: v for k, v in metrics.items() if k not in METRIC_KEYS}
        self._rows.append((self.run_id, step, split, *(_finite(metrics.get(k)) for k in METRIC_KEYS),
                           _dumps(extra) if extra else None))
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

    def finish(self, outcome: Mapping[str, Any]) -> None:
        """Write the outcome and the last rows in one transaction. `outcome`:
        "status" (completed/diverged/failed) and any of OUTCOME_KEYS ("steps"
        is accepted for "steps_done"); losses and steps left out are taken
        from the logged metrics."""
        status = outcome.get("status")
        if status not in OUTCOMES:
            raise ValueError(f"outcome status must be one of {', '.join(OUTCOMES)}, not {status!r}")
        values = {k: _finite(outcome.get(k)) for k in OUTCOME_KEYS}
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

        self._commit(derive)
        self.finished = True
        _LIVE_CLAIMS.discard(self._token)
        self.store._claims.pop(self.run_id, None)

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
