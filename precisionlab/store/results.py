"""The results store: sweeps, runs, per-step metrics, checkpoints, sharpness values and
diagnostics in one database, SQLite on one machine or PostgreSQL for many, readable as pandas DataFrames.

    store = ResultsStore("results/precisionlab.db")        # or "postgresql://me:pw@db-host/precisionlab"
    rid = run_id(cfg)                        # hash of the run's semantic config
    if store.claim_run(rid, cfg, sweep="bits"):   # False: done already, or running elsewhere
        with store.recorder(rid) as rec:     # a `precisionlab.train.recorder.Recorder`
            run(cfg, recorder=rec)       # resume from store.latest_checkpoint(rid)
    store.runs(sweep="bits"); store.metrics(sweep="bits", split="val")

Why it is shaped this way:
- One schema, one set of SQL statements, two backends (`store.sqlite`, `store.postgres`)
  that differ only where the databases do: opening, placeholders, column types, which
  errors a retry gets past. Connections and transactions (one short transaction per write,
  retried while the database is locked, conflicting or unreachable) are `store.database`'s:
  a ResultsStore is a `Database`.
- Per-step overhead stays small: the recorder buffers metric rows and writes
  them in one transaction every `flush_every` rows or `flush_seconds`, and
  always before recording a checkpoint and with the outcome, so a resumed run
  never misses a row from before its checkpoint.
- Killed processes lose nothing: a run is `running` until `finish` writes its
  outcome and last rows in one transaction, so an interrupted run never shows
  as completed; who holds a `running` run is decided by `store.liveness` (a lease
  renewed by a thread, and a pid check on the claimer's own host).
- A rerun keeps its rows up to its last checkpoint and drops later ones (the
  resumed run logs them again); `force=True` drops all of the run's rows.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from precisionlab.runtime import pid_alive
from precisionlab.store.database import Database, Transaction
from precisionlab.store.identity import canonical, dumps, run_id
from precisionlab.store.liveness import HOST, LIVE_CLAIMS, alive
from precisionlab.store.recorder import StoreRecorder
from precisionlab.store.schema import (
    CONFIG_COLUMNS,
    DONE,
    TIME_COLUMNS,
    StoreError,
    finite,
)
from precisionlab.store.url import DEFAULT_JOURNAL_MODE, DEFAULT_STORE_PATH, JOURNAL_MODES, redact
from precisionlab.train.branch import parse_parent

__all__ = ["ResultsStore", "StoreError", "config_value"]

# Created on first use by stores made before it joined the schema (SQLite only: PostgreSQL stores always have it).
_SHARPNESS_CLAIMS = ("CREATE TABLE IF NOT EXISTS sharpness_claims (run_id TEXT NOT NULL, step INTEGER NOT NULL, "
                     "metric TEXT NOT NULL, params TEXT NOT NULL, pid INTEGER, hostname TEXT, claimed REAL, "
                     "PRIMARY KEY (run_id, step, metric, params)) WITHOUT ROWID")


def config_value(config: Mapping[str, Any], dotted: str) -> Any:
    """The value at dotted path `dotted` ("optim.lr") of a plain config dict; None where a part is absent."""
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _lookup(config: Mapping[str, Any], dotted: str) -> Any:
    """A runs-table column's value: a node stands for its format (or name)."""
    node = config_value(config, dotted)
    if isinstance(node, Mapping):
        node = node.get("format", node.get("name"))
    return node


def _config_columns(config: Mapping[str, Any]) -> dict[str, Any]:
    columns = {}
    for column, paths in CONFIG_COLUMNS.items():
        found = (_lookup(config, p) for p in paths)
        columns[column] = next((v for v in found if isinstance(v, (str, int, float))), None)
    if columns["model"] == "hf":  # a Hugging Face model: its architecture, told apart from ours (hf-llama, llama)
        arch = _lookup(config, "model.hf.arch")
        columns["model"] = f"hf-{arch}" if isinstance(arch, str) else "hf"
    return columns


def _branch_columns(config: Mapping[str, Any]) -> tuple[str | None, int | None]:
    """(parent_run_id, branch_step) of a branch's config (init.parent=RUN_ID@STEP); (None, None) otherwise."""
    try:
        parent = parse_parent(_lookup(config, "init.parent"))
    except ValueError:  # a config that skipped validation: no parent recorded
        parent = None
    return (None, None) if parent is None else parent


def _without_passwords(node: Any) -> Any:
    """`node` (a config, a grid, a command line) with every database URL's password replaced by ***:
    what the store records is read by reports and copied to laptops."""
    if isinstance(node, str):
        return redact(node) if "://" in node or "password=" in node.lower() else node
    if isinstance(node, Mapping):
        return {k: _without_passwords(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_without_passwords(v) for v in node]
    return node


def _parse_json(column: pd.Series) -> list:
    return [json.loads(v) if isinstance(v, str) else None for v in column]


# --------------------------------------------------------------------------- the store


class ResultsStore(Database):
    """One results store at `location` (a path or URL, see `store.url`); cheap to construct,
    safe to pickle (connections are per process and thread, opened on first use)."""

    def __init__(self, location: str | os.PathLike = DEFAULT_STORE_PATH, *, journal_mode: str = DEFAULT_JOURNAL_MODE,
                 stale_after: float = 120.0, read_only: bool = False, create: bool = True,
                 retry_seconds: float | None = None):
        """Open the store at `location`, creating it if absent (and `create`).

        location: a file path or sqlite:///PATH (SQLite; missing parent folders are
            created), or postgresql://USER:PASSWORD@HOST:PORT/DB (a server).
        journal_mode: SQLite only, used when the store is created: "wal" (default)
            or "delete" (a rollback journal).
        stale_after: seconds without a heartbeat after which a `running` run is
            considered interrupted, whatever host ran it (`store.liveness`).
        read_only: for readers (`precisionlab report`): a store the user may not
            write is accepted; nothing is written through this object.
        create: False: a missing store is an error, not made.
        retry_seconds: how long a transaction that found the database locked,
            conflicting or unreachable is retried before StoreError (default:
            `store.database.default_retry_seconds()`). An unreachable server gets one window per
            outage in this process, whatever the number of transactions waiting.
        Raises StoreError (one line) when the location is not usable as a store.
        """
        if journal_mode not in JOURNAL_MODES:
            raise ValueError(f"journal_mode must be {' or '.join(map(repr, JOURNAL_MODES))}, not {journal_mode!r}")
        self.stale_after = stale_after
        super().__init__(location, read_only=read_only, retry_seconds=retry_seconds)
        self._claims: dict[str, str] = {}  # run_id -> claim token held through this object
        # the backup's path, when opening migrated an older store
        self.migrated_from = self.open(create=create, journal_mode=journal_mode)

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "stale_after": self.stale_after}

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._claims = {}
        self.migrated_from = None

    # ---- sweeps and runs

    def add_sweep(self, name: str, *, command: str | None = None, grid: Any = None) -> None:
        """Record a sweep (or update the command and grid of an existing one)."""
        grid_json = None if grid is None else dumps(_without_passwords(canonical(grid, semantic=False)))
        command = None if command is None else _without_passwords(command)
        self.write(lambda c: c.execute(
            "INSERT INTO sweeps VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
            "command=excluded.command, grid=excluded.grid", (name, time.time(), command, grid_json)))

    def _ensure_run(self, conn: Transaction, rid: str, config: Mapping[str, Any], sweep: str | None) -> None:
        cols = _config_columns(config)
        conn.execute(
            "INSERT INTO runs (run_id, config, model, format_x, format_w, format_grad, rounding, lr, seed, "
            "parent_run_id, branch_step, status, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?) "
            "ON CONFLICT(run_id) DO NOTHING",
            (rid, dumps(_without_passwords(canonical(config, semantic=False))), *(finite(cols[k]) for k in CONFIG_COLUMNS),
             *_branch_columns(config), time.time()))
        if sweep is not None:
            conn.execute("INSERT INTO sweeps (name, created) VALUES (?, ?) ON CONFLICT(name) DO NOTHING",
                         (sweep, time.time()))
            conn.execute("INSERT INTO sweep_runs VALUES (?, ?) ON CONFLICT DO NOTHING", (sweep, rid))

    def register_runs(self, configs: Iterable[Mapping[str, Any]], *, sweep: str | None = None) -> list[str]:
        """Record runs as `pending` (if new) in one transaction, linked to `sweep`; returns their ids."""
        configs = list(configs)
        ids = [run_id(c) for c in configs]

        def transaction(conn):
            for rid, config in zip(ids, configs):
                self._ensure_run(conn, rid, config, sweep)

        self.write(transaction)
        return ids

    def _alive(self, pid: int | None, hostname: str | None, heartbeat: float | None, token: str | None,
               now: float) -> bool:
        return alive(pid, hostname, heartbeat, token, now, self.stale_after)

    def claim_run(self, run_id: str, config: Mapping[str, Any], sweep: str | None = None, *,
                  force: bool = False) -> bool:
        """Decide whether this process must compute the run, and if so mark it `running` by us.

        completed/diverged -> False (skip) unless `force`; running in a live
        process -> False (even with `force`); new, pending, failed or
        interrupted -> True. A rerun keeps metrics up to the run's last
        checkpoint (resume from `latest_checkpoint`); `force` clears all its
        metrics, checkpoints, sharpness and diagnostics rows. Then use `recorder(run_id)`.
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
                for table in ("metrics", "checkpoints", "sharpness", "diagnostics"):
                    conn.execute(f"DELETE FROM {table} WHERE run_id=?", (run_id,))
            else:
                last = conn.execute("SELECT MAX(step) FROM checkpoints WHERE run_id=?", (run_id,)).fetchone()[0]
                for table in ("metrics", "diagnostics"):
                    conn.execute(f"DELETE FROM {table} WHERE run_id=? AND step>?", (run_id, -1 if last is None else last))
            token = uuid.uuid4().hex
            conn.execute(
                "UPDATE runs SET status='running', started=?, heartbeat=?, finished=NULL, wall_time=NULL, "
                "pid=?, hostname=?, claim=?, attempts=attempts+1, error=NULL, steps_done=NULL, "
                "final_train_loss=NULL, final_val_loss=NULL, min_val_loss=NULL, initial_loss=NULL, "
                "diverged_step=NULL, spikes=NULL WHERE run_id=?",
                (now, now, os.getpid(), HOST, token, run_id))
            return token

        token = self.write(transaction)
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

    def release_claim(self, run_id: str, token: str) -> None:
        """Forget the claim `token` on `run_id` (its recorder wrote the outcome): this process no longer
        holds the run, and `recorder(run_id)` needs a new claim."""
        LIVE_CLAIMS.discard(token)
        self._claims.pop(run_id, None)

    def fail_pending(self, run_id: str, error: str) -> bool:
        """Record a run that failed before it was claimed (its job could not start it) as
        `failed` with `error`, so it does not look unstarted; True if the run was `pending`."""
        return bool(self.write(lambda c: c.execute(
            "UPDATE runs SET status='failed', error=?, finished=? WHERE run_id=? AND status='pending'",
            (error, time.time(), run_id)).rowcount))

    def latest_checkpoint(self, run_id: str) -> tuple[int, str] | None:
        """(step, path) of the run's last recorded checkpoint, or None."""
        return self.fetchone("SELECT step, path FROM checkpoints WHERE run_id=? ORDER BY step DESC LIMIT 1", (run_id,))

    def status(self, run_id: str) -> str | None:
        """The run's status, or None if the store has no such run."""
        row = self.fetchone("SELECT status FROM runs WHERE run_id=?", (run_id,))
        return row and row[0]

    def running(self, run_ids: Iterable[str]) -> tuple[set[str], set[str]]:
        """The `running` runs among `run_ids`, split by the liveness rule: (in a live process, interrupted)."""
        where, params = self._where(run_ids, None)
        rows = self.read(f"SELECT run_id, pid, hostname, heartbeat, claim FROM runs t "
                          f"WHERE {where} AND status='running'", params)
        now, alive, interrupted = time.time(), set(), set()
        for rid, pid, host, heartbeat, token in rows.itertuples(index=False):
            pid = None if pid is None or pid != pid else int(pid)  # NULL arrives as NaN
            (alive if self._alive(pid, host, heartbeat, token, now) else interrupted).add(rid)
        return alive, interrupted

    def add_sharpness(self, run_id: str, step: int, metric: str, value: float,
                      params: Mapping[str, Any] | None = None) -> None:
        """Record (or replace) one sharpness value of a run at a step."""
        self.write(lambda c: c.execute(
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
            if self.backend == "sqlite":
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
                held = pid_alive(row[0]) if row[1] == HOST else now - row[2] <= self.stale_after
                if held:
                    return "busy"
            conn.execute("INSERT INTO sharpness_claims VALUES (?, ?, ?, ?, ?, ?, ?) "
                         "ON CONFLICT (run_id, step, metric, params) DO UPDATE SET "
                         "pid=excluded.pid, hostname=excluded.hostname, claimed=excluded.claimed",
                         (*key, os.getpid(), HOST, now))
            return "claimed"

        return self.write(transaction)

    def release_sharpness(self, run_id: str, step: int, metric: str, params: Mapping[str, Any] | None = None) -> None:
        """Drop this process's claim on a sharpness value (measured, or given up)."""
        self.write(lambda c: c.execute(
            "DELETE FROM sharpness_claims WHERE run_id=? AND step=? AND metric=? AND params=? AND pid=? AND hostname=?",
            (run_id, step, metric, dumps(dict(params or {})), os.getpid(), HOST)))

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
        return " AND ".join(clauses) or "TRUE", params

    @staticmethod
    def _times(df: pd.DataFrame) -> pd.DataFrame:
        for column in TIME_COLUMNS:
            if column in df:
                df[column] = pd.to_datetime(df[column], unit="s", utc=True)
        return df

    def sweeps(self) -> pd.DataFrame:
        """One row per sweep: name, created, command, grid (parsed JSON), runs (count)."""
        df = self.read("SELECT s.*, (SELECT COUNT(*) FROM sweep_runs l WHERE l.sweep=s.name) AS runs "
                        "FROM sweeps s ORDER BY created")
        df["grid"] = _parse_json(df["grid"])
        return self._times(df)

    def sweep_name(self, name: str | None = None) -> str:
        """`name` if the store holds that sweep; with None, the latest sweep. StoreError otherwise."""
        names = list(self.sweeps()["name"])
        if not names:
            raise StoreError(f"results store {self.location} holds no sweeps; run precisionlab sweep first")
        name = names[-1] if name is None else name
        if name not in names:
            raise StoreError(f"unknown sweep {name!r} in {self.location}; sweeps there: {', '.join(names)}")
        return name

    def runs(self, sweep: str | None = None, status: str | Iterable[str] | None = None, *,
             expand_config: bool = False) -> pd.DataFrame:
        """One row per run (of `sweep`, with `status`): the runs table (parent_run_id and
        branch_step: a branch's, NULL for a fresh start), `config` and `meta` parsed into dicts;
        `expand_config=True` adds one column per config leaf, named "config.<dotted path>"."""
        where, params = self._where(None, sweep)
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            where += f" AND t.status IN ({','.join('?' * len(statuses))})"
            params += statuses
        df = self.read(f"SELECT * FROM runs t WHERE {where} ORDER BY created, run_id", params)
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
        return self.read(f"SELECT * FROM metrics t WHERE {where} ORDER BY run_id, split, step", params)

    def checkpoints(self, run_ids: str | Iterable[str] | None = None, sweep: str | None = None) -> pd.DataFrame:
        where, params = self._where(run_ids, sweep)
        return self._times(self.read(f"SELECT * FROM checkpoints t WHERE {where} ORDER BY run_id, step", params))

    def sharpness(self, run_ids: str | Iterable[str] | None = None, sweep: str | None = None,
                  metric: str | None = None) -> pd.DataFrame:
        """Sharpness values; `params` parsed into dicts."""
        where, params = self._where(run_ids, sweep)
        if metric is not None:
            where += " AND t.metric=?"
            params.append(metric)
        df = self.read(f"SELECT * FROM sharpness t WHERE {where} ORDER BY run_id, metric, step", params)
        df["params"] = _parse_json(df["params"])
        return self._times(df)

    def diagnostics(self, run_ids: str | Iterable[str] | None = None, sweep: str | None = None,
                    name: str | None = None) -> pd.DataFrame:
        """Numerical diagnostics (run_id, step, site, name, value: precisionlab.train.diagnostics), of one `name` or all."""
        where, params = self._where(run_ids, sweep)
        where, params = (where + " AND t.name=?", [*params, name]) if name is not None else (where, params)
        return self.read(f"SELECT * FROM diagnostics t WHERE {where} ORDER BY run_id, name, site, step", params)


