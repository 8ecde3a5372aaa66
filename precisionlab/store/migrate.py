"""Bringing an older results store up to this schema version, in place.

`migrate(path)` runs when a store with an older `schema_version` is opened: a backup copy
first (through SQLite's backup API, never a plain file copy: opening and closing the database
file outside SQLite would drop this process's locks on it), then every step from the store's
version to `SCHEMA_VERSION` inside one transaction, so a failure leaves the store as it was.
Concurrent openers agree: the version is read again under the write lock.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable

from precisionlab.store.identity import IDENTITY_VERSION, run_id
from precisionlab.store.schema import SCHEMA_VERSION, V3_STATEMENTS, StoreError

__all__ = ["migrate", "backup_path"]

# Tables keyed by run id (sharpness_claims exists once `precisionlab sharpness` has run).
_RUN_TABLES = ("runs", "sweep_runs", "metrics", "checkpoints", "sharpness", "sharpness_claims", "diagnostics")


def _v1_to_v2(conn: sqlite3.Connection, path: str) -> None:
    """Identity version 2: ids hash the semantic config without neutral defaults. Recompute
    every run's id from its stored config and rewrite it wherever a run id is a key."""
    new: dict[str, str] = {}
    owner: dict[str, str] = {}
    for old, config in conn.execute("SELECT run_id, config FROM runs").fetchall():
        rid = run_id(json.loads(config))
        if rid in owner:
            raise StoreError(f"results store {path}: runs {owner[rid]} and {old} are one run under this "
                             "precisionlab's run identity; cannot migrate without merging them (the store is unchanged)")
        new[old], owner[rid] = rid, old
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    for table in (t for t in _RUN_TABLES if t in tables):
        conn.executemany(f"UPDATE {table} SET run_id=? WHERE run_id=?", [(n, o) for o, n in new.items() if n != o])
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('identity_version', ?)", (str(IDENTITY_VERSION),))


def _v2_to_v3(conn: sqlite3.Connection, path: str) -> None:
    """Branches' parent and step columns, and the diagnostics table."""
    for statement in V3_STATEMENTS:
        conn.execute(statement)


MIGRATIONS: dict[int, Callable[[sqlite3.Connection, str], None]] = {1: _v1_to_v2, 2: _v2_to_v3}


def _version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])


def backup_path(path: str, version: int) -> str:
    return f"{path}.v{version}-{time.strftime('%Y%m%d-%H%M%S')}.bak"


def migrate(path: str, timeout: float = 60.0) -> str | None:
    """Migrate the store at `path` to SCHEMA_VERSION; returns the backup's path (None if
    there was nothing to do). Raises StoreError, leaving the store unchanged, on failure."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=timeout)
    try:
        version = _version(conn)
        if version >= SCHEMA_VERSION:
            return None
        backup = backup_path(path, version)
        copy = sqlite3.connect(backup)
        try:
            conn.backup(copy)
        finally:
            copy.close()
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = _version(conn)  # another opener may have migrated it meanwhile
            while version < SCHEMA_VERSION:
                MIGRATIONS[version](conn, path)
                version += 1
            conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return backup
    except sqlite3.Error as err:
        raise StoreError(f"results store {path}: migration to schema version {SCHEMA_VERSION} failed ({err}); "
                         "the store is unchanged") from None
    finally:
        conn.close()
