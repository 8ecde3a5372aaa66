"""The SQLite side of the results store: one file on one machine (the default).

Many writers (joblib workers on one host): WAL journal (readers never block the writer), a
60 s busy timeout, short `BEGIN IMMEDIATE` transactions (no read-to-write lock upgrades, which
the busy timeout cannot wait out); `ResultsStore` retries a transaction that still found the
database locked. SQLite over a network file system is unsafe by SQLite's own documentation:
jobs on several nodes use a PostgreSQL store (`precisionlab.store.postgres`).
"""

from __future__ import annotations

import os
import re
import sqlite3
import uuid
from collections import Counter
from pathlib import Path

from precisionlab.runtime import pid_alive
from precisionlab.store.migrate import MIGRATIONS, migrate
from precisionlab.store.schema import DDL, SCHEMA_VERSION, StoreError
from precisionlab.store.url import StoreURL

__all__ = ["SQLiteBackend", "BUSY_TIMEOUT_S"]

BUSY_TIMEOUT_S = 60.0
_HEADER = b"SQLite format 3\x00"
# Connections this process opened per store path and has not closed (those of other threads, and
# those left to the garbage collector, are never subtracted: the count errs on the side of "open").
_CONNECTED: Counter[str] = Counter()


class SQLiteBackend:
    """One SQLite file; see `precisionlab.store.results.ResultsStore` for what uses it."""

    name = "sqlite"
    begin = "BEGIN IMMEDIATE"
    begin_read = "BEGIN"  # deferred: the snapshot starts at the first read
    errors = (sqlite3.Error,)

    def __init__(self, where: StoreURL):
        self.path = where.target
        self.shown = where.shown

    def _error(self, problem: str) -> StoreError:
        return StoreError(f"results store {self.path}: {problem}")

    def damaged(self, err: BaseException) -> StoreError:
        """SQLite failing on the file itself (a torn or overwritten page): what to do, in one line."""
        if "unable to open" in str(err) and not os.access(os.path.dirname(self.path), os.W_OK):
            return self._error(f"cannot be opened: its folder is read-only ({self._read_only_why()}) and SQLite "
                               "needs to create the store's -wal/-shm files there; make the folder writable, or "
                               "copy the store (with its -wal file) somewhere writable")
        return self._error(f"cannot be read as SQLite ({str(err).splitlines()[0]}): the file is damaged; "
                           "move it aside (or restore a backup) and rerun")

    # ---- what ResultsStore asks of a backend

    def sql(self, text: str) -> str:
        return text

    def connect(self, read_only: bool) -> sqlite3.Connection:
        """A connection; a reader's refuses every write. A reader of a store it may write opens it
        as a writer would, with query_only on, so that the last connection to close removes the
        -wal/-shm files as a writer's does (mode=ro leaves them beside the store); one it may not
        write opens with mode=ro, and immutable=1 on a read-only file system where a WAL store has
        no -wal file (nothing can change it there, and SQLite could not create its -shm file)."""
        try:
            if read_only and not self.writable():
                flags = "mode=ro"
                if self._read_only_filesystem() and not os.path.exists(self.path + "-wal"):
                    flags += "&immutable=1"
                conn = sqlite3.connect(f"{Path(self.path).as_uri()}?{flags}", uri=True,
                                       isolation_level=None, timeout=BUSY_TIMEOUT_S)
            else:
                conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
                conn.execute("PRAGMA query_only=ON" if read_only else
                             "PRAGMA synchronous=NORMAL")  # durable against process kills in WAL mode
        except sqlite3.DatabaseError as err:
            raise self.damaged(err) from None
        _CONNECTED[self.path] += 1
        return conn

    def writable(self) -> bool:
        """This process may write the store and create its -wal/-shm files beside it."""
        return os.access(self.path, os.W_OK) and os.access(os.path.dirname(self.path), os.W_OK)

    def _read_only_filesystem(self) -> bool:
        try:
            return bool(os.statvfs(os.path.dirname(self.path)).f_flag & os.ST_RDONLY)
        except OSError:
            return False

    def _read_only_why(self) -> str:
        return "a read-only file system" if self._read_only_filesystem() else "no write permission"

    def disconnect(self, conn: sqlite3.Connection) -> None:
        try:
            conn.close()
        finally:
            _CONNECTED[self.path] -= 1

    def rollback(self, conn: sqlite3.Connection) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:  # a damaged file may refuse even that; the connection is dropped anyway
            pass

    def transient(self, err: BaseException) -> str | None:
        """Why retrying may help ("locked"), or None."""
        if isinstance(err, sqlite3.OperationalError) and ("locked" in str(err) or "busy" in str(err)):
            return "locked"
        return None

    def lost(self, conn: sqlite3.Connection) -> bool:
        return False  # a file does not go away under an open connection

    def failure(self, err: BaseException, writing: bool) -> StoreError:
        if isinstance(err, sqlite3.OperationalError) and writing:
            return self._error(f"write failed ({err})")
        return self.damaged(err)

    def tables(self, conn: sqlite3.Connection) -> set[str]:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}

    # ---- opening

    def open(self, *, read_only: bool, create: bool, journal_mode: str) -> str | None:
        """Check (or create) the store; returns the backup's path when an older store was migrated."""
        if os.path.exists(self.path):
            return self._check_existing(read_only)
        if read_only or not create:
            raise self._error("does not exist; run precisionlab sweep first or pass --store PATH")
        self._create(journal_mode)
        return self._check_existing(read_only)

    def _check_existing(self, read_only: bool) -> str | None:
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
                    header = f.read(len(_HEADER))
            except OSError as err:
                raise self._error(f"cannot be read ({err.strerror})") from None
            if header != _HEADER:  # an empty file too, which SQLite would take for an empty database
                raise self._error("is not an SQLite database (expected a precisionlab results store or a new path)")
        if not read_only and not self.writable():
            raise self._error(f"is read-only ({self._read_only_why()}); this command writes to it: choose a "
                              "writable store, or copy this one somewhere writable (precisionlab store copy)")
        conn = self.connect(read_only)
        try:
            return self._check_schema(conn, read_only)
        finally:
            self.disconnect(conn)  # the last connection to close leaves no -wal/-shm files behind

    def _check_schema(self, conn: sqlite3.Connection, read_only: bool) -> str | None:
        try:
            if "meta" not in self.tables(conn):
                raise self._error("is an SQLite database but not a precisionlab results store (no meta table)")
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.DatabaseError as err:
            raise self.damaged(err) from None
        found, backup = row[0] if row else None, None
        if str(found).isdigit() and int(found) > SCHEMA_VERSION:
            raise self._error(f"has schema version {found}, newer than this precisionlab reads "
                              f"({SCHEMA_VERSION}); upgrade precisionlab")
        if str(found).isdigit() and int(found) in MIGRATIONS:
            if not os.access(self.path, os.W_OK):
                raise self._error(f"has schema version {found}, older than this precisionlab's ({SCHEMA_VERSION}), "
                                  "and is not writable, so it cannot be migrated; make it writable and rerun")
            backup = migrate(self.path, BUSY_TIMEOUT_S)
            found = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
        if str(found) != str(SCHEMA_VERSION):
            raise self._error(f"has unknown schema version {found!r} (this precisionlab reads {SCHEMA_VERSION})")
        return backup

    def _create(self, journal_mode: str) -> None:
        """Build the schema in a temporary file, then link it into place: no
        partial or empty store is ever visible, and concurrent creators agree.
        Missing folders are created, and removed again if creation fails."""
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
            if match and not pid_alive(int(match[1])):
                try:
                    os.unlink(os.path.join(folder, name))
                except OSError:  # another opener removed it first
                    pass
