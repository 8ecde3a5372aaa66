"""Where a results store lives: one string, a file path or a database URL, parsed once.

    results/precisionlab.db                      a plain path: SQLite (the default)
    sqlite:///results/precisionlab.db            SQLite, a relative path (three slashes)
    sqlite:////scratch/me/precisionlab.db        SQLite, an absolute path (four slashes)
    postgresql://USER:PASSWORD@HOST:PORT/DB      PostgreSQL (also postgresql+psycopg://, postgres://)

The spellings are SQLAlchemy's and Optuna's. SQLite is for one machine; a PostgreSQL
server is for jobs on many nodes (SQLite's locking over a network file system is
unreliable by its own documentation).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from precisionlab.store.schema import StoreError

__all__ = ["StoreURL", "parse_store_url", "configured_store", "redact", "URL_HELP"]

URL_HELP = ("accepted: a file path or sqlite:///PATH (SQLite, one machine), "
            "postgresql://USER:PASSWORD@HOST:PORT/DB (a server, for clusters)")
_POSTGRES_SCHEMES = ("postgresql", "postgresql+psycopg", "postgres")


def redact(url: str) -> str:
    """`url` with its password replaced by ***, for messages and logs."""
    url = re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url)
    return re.sub(r"(?i)(password=)[^&\s]*", r"\1***", url)


@dataclass(frozen=True)
class StoreURL:
    backend: str  # "sqlite" or "postgresql"
    target: str   # sqlite: the absolute file path; postgresql: the libpq URL (password included)

    @property
    def url(self) -> str:
        """The canonical URL: what to hand to another process (absolute for SQLite)."""
        return f"sqlite:///{self.target}" if self.backend == "sqlite" else self.target

    @property
    def shown(self) -> str:
        """For messages: SQLite's path, PostgreSQL's URL without its password."""
        return self.target if self.backend == "sqlite" else redact(self.target)


def configured_store(cfg) -> str | None:
    """Where a run's config says to record: `store.url` if set, else `store.path` (None: don't record)."""
    node = cfg.get("store") if hasattr(cfg, "get") else None
    if node is None:
        return None
    return node.get("url") or node.get("path")


def parse_store_url(location: str | os.PathLike, base: str | os.PathLike | None = None) -> StoreURL:
    """Parse a store location; a relative SQLite path is taken from `base` (default: the
    working directory). Raises StoreError (one line, the accepted spellings) on a malformed
    or unsupported URL, or a PostgreSQL URL without psycopg installed."""
    text = os.fspath(location)
    if not isinstance(text, str) or not text.strip():
        raise StoreError(f"store location {text!r} is empty; {URL_HELP}")
    scheme, sep, rest = text.partition("://")
    if not sep:  # a plain path
        return StoreURL("sqlite", _sqlite_file(text, text, base))
    scheme = scheme.lower()
    if scheme == "sqlite":
        if not rest.startswith("/") or rest in ("/", "/:memory:") or "?" in rest:
            raise StoreError(f"store URL {text!r} names no database file (sqlite:///relative/path.db or "
                             f"sqlite:////absolute/path.db; an in-memory store is not shared between processes)")
        return StoreURL("sqlite", _sqlite_file(rest[1:], text, base))
    if scheme in _POSTGRES_SCHEMES:
        url = "postgresql://" + rest
        try:
            from psycopg.conninfo import conninfo_to_dict
        except ImportError:
            raise StoreError(f"store URL {redact(text)}: PostgreSQL stores need psycopg; "
                             "pip install 'precisionlab[postgres]'") from None
        try:
            info = conninfo_to_dict(url)
        except Exception as err:  # psycopg.ProgrammingError: libpq's own one-line reason
            raise StoreError(f"store URL {redact(text)} is malformed ({redact(str(err).strip().splitlines()[0])}); {URL_HELP}") from None
        port = str(info.get("port", "5432"))
        if not all(p.isdigit() and 0 < int(p) < 65536 for p in port.split(",")):
            raise StoreError(f"store URL {redact(text)} has port {port!r}, expected a number 1-65535; {URL_HELP}")
        return StoreURL("postgresql", url)
    raise StoreError(f"store URL scheme {scheme!r} is not supported ({redact(text)}); {URL_HELP}")


def _sqlite_file(path: str, given: str, base: str | os.PathLike | None) -> str:
    """The absolute path of an SQLite store; a path that can only name a folder (`results/`) is an
    error, not a file named after the folder."""
    if path.endswith(("/", os.sep)) or os.path.basename(path) in (".", ".."):
        raise StoreError(f"store location {given!r} names a folder, not a file; give the store's file name, "
                         f"e.g. {os.path.join(path, 'precisionlab.db')}")
    return os.path.abspath(os.path.join(os.fspath(base or os.getcwd()), os.path.expanduser(path)))
