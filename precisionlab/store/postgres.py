"""The PostgreSQL side of the results store: one server, writers on many nodes.

psycopg 3 straight, no ORM: the store's SQL is a few dozen statements that both databases
read alike (`INSERT ... ON CONFLICT`, no `INSERT OR ...`); what differs sits here: `%s`
placeholders, column types (SQLite's REAL and INTEGER are PostgreSQL's DOUBLE PRECISION
and BIGINT), how transactions serialise, and which errors are worth a retry.

- Every write transaction is SERIALIZABLE, as SQLite's single writer makes it: a run's
  claim (read its row, then mark it ours) can never be taken by two workers. The loser of
  a conflict gets a serialization failure and `ResultsStore` retries it with backoff.
- A lost connection (server restart, network) is dropped and reopened on the next attempt;
  transactions are idempotent, so one retried after an unacknowledged commit does no harm.
- Opening connects once with a short timeout and no retry: a wrong URL, password or host
  fails in seconds with libpq's one-line reason.
- The store's tables live in the database's default schema: give precisionlab a database
  of its own (createdb precisionlab).
"""

from __future__ import annotations

import re
from functools import lru_cache

from precisionlab.store.schema import DDL, SCHEMA_VERSION, TABLES, V3_STATEMENTS, StoreError
from precisionlab.store.url import StoreURL

__all__ = ["PostgresBackend", "CONNECT_TIMEOUT_S", "postgres_ddl"]

CONNECT_TIMEOUT_S = 5
_CREATE_LOCK = 0x707265636973  # pg_advisory_xact_lock key: concurrent creators of one store take turns
# SQLSTATE classes of errors a retry can get past: connection exceptions (08), serialization
# failures and deadlocks (40), too many connections (53300), the server shutting down or
# starting (57P01-57P03).
_TRANSIENT_STATES = ("08", "40001", "40P01", "53300", "57P01", "57P02", "57P03")


def postgres_ddl(ddl: str = DDL) -> str:
    """The store's DDL in PostgreSQL's types: REAL is 4 bytes there, INTEGER 4 bytes too (tokens overflow it)."""
    ddl = re.sub(r"\bREAL\b", "DOUBLE PRECISION", ddl)
    ddl = re.sub(r"\bINTEGER\b", "BIGINT", ddl)
    return ddl.replace(" WITHOUT ROWID", "")


@lru_cache(maxsize=256)
def _placeholders(text: str) -> str:
    return text.replace("?", "%s")


class PostgresBackend:
    """A database on a PostgreSQL server; see `precisionlab.store.results.ResultsStore`."""

    name = "postgresql"
    begin = "BEGIN ISOLATION LEVEL SERIALIZABLE"
    begin_read = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"

    def __init__(self, where: StoreURL):
        import psycopg  # parse_store_url checked it is installed

        self._psycopg = psycopg
        self.errors = (psycopg.Error,)
        self.url = where.target
        self.shown = where.shown
        self.path = None

    def _error(self, problem: str) -> StoreError:
        return StoreError(f"results store {self.shown}: {problem}")

    # ---- what ResultsStore asks of a backend

    def sql(self, text: str) -> str:
        return _placeholders(text)

    def connect(self, read_only: bool):
        options = "-c default_transaction_read_only=on" if read_only else None
        # keepalives: a node that dies without closing its socket is noticed by the server in ~1 min
        return self._psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                     application_name="precisionlab", options=options, keepalives=1,
                                     keepalives_idle=30, keepalives_interval=10, keepalives_count=3)

    def disconnect(self, conn) -> None:
        try:
            conn.close()
        except self._psycopg.Error:
            pass

    def rollback(self, conn) -> None:
        try:
            if not conn.closed and conn.info.transaction_status != self._psycopg.pq.TransactionStatus.IDLE:
                conn.execute("ROLLBACK")
        except self._psycopg.Error:
            pass

    def transient(self, err: BaseException) -> str | None:
        """Why retrying may help, or None."""
        if not isinstance(err, self._psycopg.OperationalError):
            return None
        state = err.sqlstate
        if state is None or state.startswith(_TRANSIENT_STATES):  # None: libpq's own, e.g. connection refused
            return "conflicting with a concurrent transaction" if state in ("40001", "40P01") else \
                f"unreachable ({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__})"
        return None

    def lost(self, conn) -> bool:
        return conn is None or conn.closed or conn.broken

    def failure(self, err: BaseException, writing: bool) -> StoreError:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return self._error(f"{'write' if writing else 'read'} failed ({reason})")

    def tables(self, conn) -> set[str]:
        return {r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables "
                                           "WHERE table_schema = current_schema()")}

    # ---- opening

    def open(self, *, read_only: bool, create: bool, journal_mode: str) -> str | None:
        """Connect once (no retry: bad input fails fast), then check or create the schema."""
        try:
            conn = self.connect(read_only)
        except self._psycopg.Error as err:
            reason = " ".join(str(err).split()) or type(err).__name__
            raise self._error(f"cannot connect ({reason.removeprefix('connection failed: ')}); "
                              "check the URL's host, port, user, password and database") from None
        try:
            self._check_schema(conn, read_only, create)
        except self._psycopg.Error as err:
            raise self.failure(err, writing=False) from None
        finally:
            self.disconnect(conn)
        return None

    def _check_schema(self, conn, read_only: bool, create: bool) -> None:
        psycopg = self._psycopg
        with conn.transaction():
            if not read_only:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_CREATE_LOCK,))
            found = self.tables(conn)
            if "meta" not in found:
                ours = found & set(TABLES)
                if ours:
                    raise self._error(f"has tables {', '.join(sorted(ours))} but no meta table: not a precisionlab "
                                      "results store; use a database of its own")
                if read_only or not create:
                    raise self._error("holds no results store yet; run precisionlab sweep with this store.url first")
                try:
                    conn.execute(postgres_ddl())
                except psycopg.errors.InsufficientPrivilege as err:
                    raise self._error(f"cannot be created ({str(err).strip().splitlines()[0]}); "
                                      "grant the user CREATE on the database's schema") from None
                return
            row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row and row[0] == "2" and not read_only:  # under the lock: concurrent openers migrate once
                for statement in V3_STATEMENTS:
                    conn.execute(postgres_ddl(statement))
                conn.execute("UPDATE meta SET value=%s WHERE key='schema_version'", (str(SCHEMA_VERSION),))
                row = (str(SCHEMA_VERSION),)
        found_version = row[0] if row else None
        if str(found_version).isdigit() and int(found_version) > SCHEMA_VERSION:
            raise self._error(f"has schema version {found_version}, newer than this precisionlab reads "
                              f"({SCHEMA_VERSION}); upgrade precisionlab")
        if str(found_version) != str(SCHEMA_VERSION):  # PostgreSQL stores began at version 2; read-only openers of one cannot migrate it
            raise self._error(f"has unknown schema version {found_version!r} (this precisionlab reads {SCHEMA_VERSION})")
