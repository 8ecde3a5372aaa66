"""Where a results store lives: one string, a file path or a database URL, parsed once.

    results/precisionlab.db                      a plain path: SQLite (the default)
    sqlite:///results/precisionlab.db            SQLite, a relative path (three slashes)
    sqlite:////scratch/me/precisionlab.db        SQLite, an absolute path (four slashes)
    postgresql://USER:PASSWORD@HOST:PORT/DB      PostgreSQL (also postgresql+psycopg://, postgres://)

The default store is DEFAULT_STORE_PATH (relative to the launch directory), and a new SQLite
store is created with DEFAULT_JOURNAL_MODE: the one home of both, which the config schema, the
CLI's --store options and ResultsStore refer to.

The spellings are SQLAlchemy's and Optuna's. SQLite is for one machine; a PostgreSQL
server is for jobs on many nodes (SQLite's locking over a network file system is
unreliable by its own documentation).

Passwords: a password in a URL (USER:PASSWORD@, or ?password=) is a secret precisionlab keeps
out of everything it writes and prints. `train` and `sweep` take it out of a `store.url=`
override before Hydra sees the command line (`hide_passwords`): the URL without it is what
the config, Hydra's job lines and `.hydra/` files, run.json and checkpoints hold, and the
password goes to PGPASSWORD for this process and the runs it starts (libpq reads it, as it
reads ~/.pgpass). Messages show URLs through `redact`. A password written as a URL must
percent-encode `/ ? # @` and `%` (%2F %3F %23 %40 %25); one that does not is refused without
echoing it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from precisionlab.store.schema import StoreError

__all__ = ["StoreURL", "parse_store_url", "configured_store", "absolute_store_url", "redact", "hide_passwords",
           "without_password", "URL_HELP", "DEFAULT_STORE_PATH", "JOURNAL_MODES", "DEFAULT_JOURNAL_MODE"]

DEFAULT_STORE_PATH = "results/precisionlab.db"
# SQLite journal modes a store may be created with: WAL (readers never block the writer) or a rollback
# journal ("delete": for file systems where WAL's shared memory does not work)
JOURNAL_MODES = ("wal", "delete")
DEFAULT_JOURNAL_MODE = "wal"

URL_HELP = ("accepted: a file path or sqlite:///PATH (SQLite, one machine), "
            "postgresql://USER:PASSWORD@HOST:PORT/DB (a server, for clusters)")
_POSTGRES_SCHEMES = ("postgresql", "postgresql+psycopg", "postgres")


def redact(url: str) -> str:
    """`url` (or a text holding URLs) with every password replaced by ***, for messages and logs: from
    `://USER:` to the last `@` of the word, so a password holding `/`, `@` or `:` is hidden whole."""
    url = re.sub(r"(://[^/@:\s]*:)\S*@", r"\1***@", url)
    return re.sub(r"(?i)(password=)[^&\s]*", r"\1***", url)


def _userinfo(url: str) -> tuple[str, str | None, str]:
    """(`scheme://`, what comes before the last `@` or None, the rest): a URL's USER[:PASSWORD] part,
    found without trusting the password to be percent-encoded."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return scheme + sep, None, rest
    userinfo, _, host = rest.rpartition("@")
    return scheme + sep, userinfo, host


def _check_userinfo(text: str) -> None:
    """StoreError (one line, the password not shown) when a PostgreSQL URL's user or password holds
    characters a URL must percent-encode: libpq would read them as host, port or database."""
    head, userinfo, host = _userinfo(text)
    if userinfo is None:
        return
    shown = f"{head}{userinfo.partition(':')[0] if ':' in userinfo else '***'}:***@{host}"
    if any(c in userinfo for c in "/?#@"):
        raise StoreError(f"store URL {shown}: its user or password holds '/', '?', '#' or '@', which a URL must "
                         "percent-encode (%2F, %3F, %23, %40); or leave the password out of the URL and set "
                         "PGPASSWORD or a ~/.pgpass line")
    if re.search(r"%(?![0-9A-Fa-f]{2})", userinfo):
        raise StoreError(f"store URL {shown}: its user or password holds a '%' that is not a percent-encoding "
                         "(write % as %25); or leave the password out of the URL and set PGPASSWORD or a ~/.pgpass line")


def without_password(url: str) -> str:
    """`url` with its password taken out (USER:PASSWORD@ -> USER@, and any password= parameter)."""
    head, userinfo, host = _userinfo(url)
    if userinfo is not None:
        url = f"{head}{userinfo.partition(':')[0]}@{host}"
    base, sep, query = url.partition("?")
    if sep:
        params = [p for p in query.split("&") if not p.lower().startswith("password=")]
        url = base + ("?" + "&".join(params) if params else "")
    return url


def hide_passwords(overrides: list[str]) -> list[str]:
    """`train`/`sweep` overrides with the password taken out of a PostgreSQL `store.url=` (see the module
    docstring): the password goes to PGPASSWORD for this process and the runs it starts. A URL that
    does not parse is left as it is, for validation to refuse in one line."""
    hidden = []
    for arg in overrides:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") == "store.url":
            quote = value[0] if len(value) > 1 and value[0] in "'\"" and value[-1] == value[0] else ""
            url = value[len(quote):len(value) - len(quote)]
            try:
                where = parse_store_url(url)
            except StoreError:
                where = None
            if where is not None and where.backend == "postgresql":
                from psycopg.conninfo import conninfo_to_dict  # parse_store_url checked it is installed

                password = conninfo_to_dict(where.target).get("password")
                if password is not None:
                    os.environ["PGPASSWORD"] = password
                    arg = f"{key}={quote}{without_password(url)}{quote}"
        hidden.append(arg)
    return hidden


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
    url = node.get("url")
    if url and str(url).partition("://")[0].lower() in _POSTGRES_SCHEMES and without_password(str(url)) != str(url):
        _check_userinfo(str(url))  # a malformed one: that, in its own words
        raise StoreError(f"store.url {redact(str(url))} holds a password, which would be written into run folders and "
                         "checkpoints with the config; give it in store.url on the command line (precisionlab takes it "
                         "out), as PGPASSWORD or in ~/.pgpass")
    return url or node.get("path")


def absolute_store_url(cfg, base: str | os.PathLike) -> None:
    """Make an sqlite:/// `store.url` of `cfg` (a DictConfig) absolute, taken from `base`, in place (the
    store's own rule for relative paths, as `runtime.absolute_paths` does for store.path). Other URLs,
    and a malformed one (refused in one line where the store is opened), are left alone."""
    from omegaconf import open_dict

    url = cfg.store.get("url") if cfg.get("store") is not None else None
    if isinstance(url, str) and url.lower().startswith("sqlite:"):
        try:
            absolute = parse_store_url(url, base).url
        except StoreError:  # reported, in one line, where the store is opened
            return
        with open_dict(cfg):
            cfg.store.url = absolute


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
        _check_userinfo(text)
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
