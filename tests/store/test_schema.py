"""The store's schema (precisionlab.store.schema): its DDL run on a fresh SQLite database makes every table
it names, with the columns the recorder and the runs table's config columns fill, records its versions,
and refuses a status outside the run life cycle."""

from __future__ import annotations

import math
import sqlite3

import pytest

from precisionlab.store.identity import IDENTITY_VERSION
from precisionlab.store.schema import (CONFIG_COLUMNS, DDL, METRIC_KEYS, OUTCOME_KEYS, SCHEMA_VERSION, STATUSES,
                                       TABLES, TIME_COLUMNS, finite)


@pytest.fixture
def conn():
    conn = sqlite3.connect(":memory:")
    conn.executescript(DDL)
    yield conn
    conn.close()


def _columns(conn, table):
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def test_the_ddl_makes_exactly_the_tables_it_names(conn):
    made = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert made == set(TABLES)
    assert len(TABLES) == len(set(TABLES))


def test_the_ddl_records_the_schema_and_identity_versions(conn):
    meta = dict(conn.execute("SELECT key, value FROM meta"))
    assert meta == {"schema_version": str(SCHEMA_VERSION), "identity_version": str(IDENTITY_VERSION)}


def test_runs_and_metrics_have_the_columns_the_recorder_fills(conn):
    runs = _columns(conn, "runs")
    for column in (*CONFIG_COLUMNS, *OUTCOME_KEYS, *TIME_COLUMNS, "run_id", "config", "status", "attempts",
                   "pid", "hostname", "claim"):
        assert column in runs, column
    assert len(runs) == len(set(runs))
    # Version 3's branch columns were added by ALTER TABLE, so they come last (as in a migrated store).
    assert runs[-2:] == ["parent_run_id", "branch_step"]
    metrics = _columns(conn, "metrics")
    assert set(METRIC_KEYS) <= set(metrics) and {"run_id", "step", "split", "extra"} <= set(metrics)
    assert _columns(conn, "diagnostics") == ["run_id", "step", "site", "name", "value"]


def _insert_run(conn, run_id, status):
    conn.execute("INSERT INTO runs (run_id, config, status, created) VALUES (?, '{}', ?, 0)", (run_id, status))


def test_only_the_life_cycle_statuses_are_accepted(conn):
    for i, status in enumerate(STATUSES):
        _insert_run(conn, f"r{i}", status)
    assert sorted(s for (s,) in conn.execute("SELECT status FROM runs")) == sorted(STATUSES)
    for bad in ("done", "RUNNING", ""):
        with pytest.raises(sqlite3.IntegrityError):
            _insert_run(conn, f"bad-{bad}", bad)


def test_a_metric_row_is_unique_per_run_step_and_split(conn):
    conn.execute("INSERT INTO metrics (run_id, step, split, loss) VALUES ('r', 1, 'train', 1.0)")
    conn.execute("INSERT INTO metrics (run_id, step, split, loss) VALUES ('r', 1, 'val', 2.0)")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO metrics (run_id, step, split, loss) VALUES ('r', 1, 'train', 3.0)")


def test_finite_turns_only_nan_into_none():
    assert finite(float("nan")) is None
    assert finite(math.inf) == math.inf and finite(-math.inf) == -math.inf
    assert finite(1.5) == 1.5 and finite(0) == 0 and finite("x") == "x" and finite(None) is None
