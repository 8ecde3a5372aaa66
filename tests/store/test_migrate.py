"""Opening a store written by precisionlab 0.1 (schema 1, identity 1) or 0.2 (schema 2) migrates it in place; a newer
store is refused; the store's open path leaves other connections' locks alone."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import compose_train
from helpers.store import make_config, record, v2_ddl
from precisionlab.cli import app
from precisionlab.config import validate
from precisionlab.store import ResultsStore, StoreError, run_id
from precisionlab.store.identity import canonical
from precisionlab.store.schema import DDL

# The DDL of schema version 1, as precisionlab 0.1 created it (git show 7827705:precisionlab/store.py).
V1_DDL = """
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
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'completed', 'diverged', 'failed')),
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
INSERT INTO meta VALUES ('schema_version', '1');
"""


def v1_run_id(config) -> str:
    """precisionlab 0.1's run id: sha256 of the whole config minus the non-semantic keys."""
    return hashlib.sha256(json.dumps(canonical(config), sort_keys=True, separators=(",", ":"),
                                     default=str).encode()).hexdigest()[:16]


def make_v1_store(path: Path) -> dict[str, dict]:
    """A schema-1 store with two runs of sweep "old" (one completed with metrics, a checkpoint and
    a sharpness value, one pending); returns {old id: config}."""
    configs = [json.loads(json.dumps(canonical(validate(compose_train("precision=mask", f"seed={seed}")),
                                               semantic=False))) for seed in (0, 1)]
    conn = sqlite3.connect(path)
    conn.executescript(V1_DDL)
    now = time.time()
    conn.execute("INSERT INTO sweeps VALUES ('old', ?, 'precisionlab sweep', '{}')", (now,))
    old = {}
    for config, status in zip(configs, ("completed", "pending")):
        rid = v1_run_id(config)
        old[rid] = config
        conn.execute("INSERT INTO runs (run_id, config, seed, status, created, attempts, final_val_loss) "
                     "VALUES (?, ?, ?, ?, ?, 1, ?)", (rid, json.dumps(config), config["seed"], status, now,
                                                      2.5 if status == "completed" else None))
        conn.execute("INSERT INTO sweep_runs VALUES ('old', ?)", (rid,))
        if status == "completed":
            conn.executemany("INSERT INTO metrics (run_id, step, split, loss) VALUES (?, ?, 'train', ?)",
                             [(rid, step, 5.0 - step / 10) for step in range(1, 11)])
            conn.execute("INSERT INTO checkpoints VALUES (?, 10, '/ck/step_10.pt', ?)", (rid, now))
            conn.execute("INSERT INTO sharpness VALUES (?, 10, 'logit', '{}', 0.5, ?)", (rid, now))
    conn.commit()
    conn.close()
    return old


def _count(path, table):
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def test_a_v1_store_migrates_in_place_and_keeps_every_row(tmp_path):
    path = tmp_path / "old.db"
    old = make_v1_store(path)
    counts = {t: _count(path, t) for t in ("runs", "sweep_runs", "metrics", "checkpoints", "sharpness")}
    store = ResultsStore(path)
    new = {rid: run_id(config) for rid, config in old.items()}
    assert set(new) != set(new.values())  # the ids did change, by design, once
    assert {t: _count(path, t) for t in counts} == counts  # every row kept
    runs = store.runs(sweep="old")
    assert set(runs.run_id) == set(new.values()) and sorted(runs.status) == ["completed", "pending"]
    done = next(n for o, n in new.items() if old[o]["seed"] == 0)
    assert store.status(done) == "completed" and len(store.metrics(done)) == 10
    assert list(store.checkpoints(done).step) == [10] and list(store.sharpness(done).value) == [0.5]
    with sqlite3.connect(path) as conn:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
    assert meta == {"schema_version": "3", "identity_version": "2"}
    # The backup is the untouched v1 store, made through SQLite.
    (backup,) = tmp_path.glob("old.db.v1-*.bak")
    assert store.migrated_from == str(backup)
    with sqlite3.connect(backup) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("1",)
        assert {r[0] for r in conn.execute("SELECT run_id FROM runs")} == set(old)
    # A rerun of the same grid finds the finished run done: claiming it is refused.
    config = old[next(o for o in old if old[o]["seed"] == 0)]
    assert run_id(validate(compose_train("precision=mask", "seed=0"))) == done
    assert not store.claim_run(done, config, "old")
    store.close()
    assert ResultsStore(path).migrated_from is None  # once


def test_migration_that_would_merge_two_runs_leaves_the_store_unchanged(tmp_path):
    path = tmp_path / "old.db"
    old = make_v1_store(path)
    (first, config), = [(o, c) for o, c in old.items() if c["seed"] == 0]
    with sqlite3.connect(path) as conn:  # the same run once more under another old id (e.g. an older 0.1 key set)
        conn.execute("INSERT INTO runs (run_id, config, status, created, attempts) VALUES ('twin', ?, 'pending', 0, 0)",
                     (json.dumps(config),))
    with pytest.raises(StoreError, match="are one run under this precisionlab's run identity") as err:
        ResultsStore(path)
    assert "\n" not in str(err.value)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("1",)
        assert first in {r[0] for r in conn.execute("SELECT run_id FROM runs")}


def test_a_newer_store_is_refused_with_one_line_and_exit_2(tmp_path):
    path = tmp_path / "newer.db"
    ResultsStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value='4' WHERE key='schema_version'")
    with pytest.raises(StoreError, match=r"has schema version 4, newer than this precisionlab reads \(3\)"):
        ResultsStore(path)
    result = CliRunner().invoke(app, ["report", "--store", str(path)])
    assert result.exit_code == 2 and "newer than this precisionlab reads (3); upgrade precisionlab" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "reports").exists()


def test_a_v2_store_gains_the_branch_columns_and_the_diagnostics_table(tmp_path):
    path = tmp_path / "v2.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(v2_ddl())
    record(ResultsStore(path), make_config())  # opening migrates; a run records into the new schema
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("3",)
        columns = [r[1] for r in conn.execute("PRAGMA table_info(runs)")]
        assert columns[-2:] == ["parent_run_id", "branch_step"]
        assert conn.execute("SELECT parent_run_id, branch_step FROM runs").fetchall() == [(None, None)]
        conn.execute("INSERT INTO diagnostics VALUES ('r', 10, 'blocks.0.attn.c_attn/fwd_x', 'saturated', 0.5)")
    (backup,) = tmp_path.glob("v2.db.v2-*.bak")
    with sqlite3.connect(backup) as conn:
        assert "diagnostics" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    # A new store has the same columns in the same order.
    with sqlite3.connect(":memory:") as conn:
        conn.executescript(DDL)
        assert [r[1] for r in conn.execute("PRAGMA table_info(runs)")] == columns


def _locks_on(path: Path) -> set[str]:
    """The POSIX lock lines of /proc/locks on the file's inode (Linux)."""
    inode = os.stat(path).st_ino
    return {line.split(":", 1)[1].strip() for line in Path("/proc/locks").read_text().splitlines()
            if line.split()[5].endswith(f":{inode}") and f"{os.getpid()}" in line.split()}


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks")
def test_opening_a_store_again_keeps_this_process_s_locks(tmp_path):
    """Before, ResultsStore() read the file's header with open()/close(), which dropped every POSIX
    lock this process held on it: a live connection lost its WAL read lock and another process
    could delete its -wal/-shm (issue 17, defect 1)."""
    path = tmp_path / "store.db"
    store = ResultsStore(path)
    conn = store.connection()
    conn.execute("BEGIN")
    conn.execute("SELECT COUNT(*) FROM runs").fetchone()  # a read transaction: WAL read lock held
    held = _locks_on(path)
    assert held  # the connection's locks on the database file (the shm locks are on another inode)
    again = ResultsStore(path)  # opening it again in this process
    again.runs()
    assert _locks_on(path) >= held
    conn.execute("COMMIT")
    again.close()
    store.close()
