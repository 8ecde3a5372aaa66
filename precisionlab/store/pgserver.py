"""A throwaway PostgreSQL server for a results store: a cluster job's, a benchmark's, the tests'.

    python -m precisionlab.store.pgserver /scratch/$USER/pg --port 5433 --listen '*'
    # prints the store URL (postgresql://precisionlab:PASSWORD@HOST:5433/precisionlab); Ctrl-C stops it

It needs PostgreSQL's server programs (Debian/Ubuntu: `apt-get install postgresql`; initdb and
pg_ctl are looked up on PATH, then under /usr/lib/postgresql/*/bin). The data folder is made
once (initdb) and reused on the next start, so a sweep's store survives a server restart.
initdb refuses to run as root: as root, the server runs as the `postgres` system user, which
must be able to enter the folder's parents (mkdtemp under /tmp, not pytest's 0700 folders).
"""

from __future__ import annotations

import argparse
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["ThrowawayServer", "find_bin", "PostgresNotFound"]


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server programs on this machine."""


def find_bin() -> Path:
    """The folder holding initdb and pg_ctl: PATH first, then the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if candidates:
        return Path(candidates[-1]).parent
    raise PostgresNotFound("PostgreSQL's server programs (initdb, pg_ctl) are not installed; "
                           "on Debian/Ubuntu: apt-get install postgresql")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThrowawayServer:
    """A PostgreSQL server on `folder` (made if new) and `port`, user `precisionlab` with a
    password (kept in folder/password), listening on `listen`. `durable=False` turns fsync
    off: for tests and benchmarks, never for results you keep."""

    USER = "precisionlab"

    def __init__(self, folder: str | os.PathLike, port: int | None = None, *, listen: str = "127.0.0.1",
                 durable: bool = True, max_connections: int = 200):
        self.folder = Path(folder).absolute()
        self.port = port or free_port()
        self.listen, self.durable, self.max_connections = listen, durable, max_connections
        self.bin = find_bin()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def password(self) -> str:
        return (self.folder / "password").read_text().strip()

    def url(self, database: str = "precisionlab", host: str | None = None) -> str:
        host = host or ("127.0.0.1" if self.listen in ("*", "0.0.0.0") else self.listen.split(",")[0])
        return f"postgresql://{self.USER}:{self.password}@{host}:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self._as, *args], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{Path(args[0]).name} failed ({done.returncode}): {(done.stderr or done.stdout).strip()}")

    def _init(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        password = self.folder / "password"
        password.write_text(secrets.token_urlsafe(18) + "\n")
        password.chmod(0o600)
        if self._as:
            shutil.chown(self.folder, "postgres")
            shutil.chown(password, "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", self.USER, f"--pwfile={password}",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
        if self.listen not in ("127.0.0.1", "localhost"):  # password logins from other hosts (cluster nodes)
            with open(self.data / "pg_hba.conf", "a") as hba:
                hba.write("host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n")

    def start(self) -> str:
        """Start the server (initialising the folder if new) and make database `precisionlab`; returns its URL."""
        if not (self.data / "PG_VERSION").exists():
            self._init()
        options = (f"-p {self.port} -c listen_addresses={self.listen} -c unix_socket_directories='' "
                   f"-c max_connections={self.max_connections}" + ("" if self.durable else " -c fsync=off"))
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.folder / "server.log"),
                  "-w", "-t", "60", "start")
        self.create_database("precisionlab")
        return self.url()

    def create_database(self, name: str) -> str:
        """Make database `name` if absent; returns its URL."""
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=10) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname=%s", (name,)).fetchone():
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (fast: roll back open transactions, disconnect everyone); the folder stays."""
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, down_seconds: float = 0.0) -> None:
        """Stop, stay down `down_seconds`, start again on the same port (a server restart, as an admin does it)."""
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def remove(self) -> None:
        """Stop the server and delete its folder."""
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m precisionlab.store.pgserver", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="data folder (made on first use, reused afterwards)")
    parser.add_argument("--port", type=int, default=5433, help="TCP port (default 5433)")
    parser.add_argument("--listen", default="127.0.0.1",
                        help="addresses to listen on: 127.0.0.1 (this machine only, default) or '*' (cluster nodes)")
    args = parser.parse_args(argv)
    try:
        server = ThrowawayServer(args.folder, args.port, listen=args.listen)
        url = server.start()
    except (PostgresNotFound, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.listen not in ("127.0.0.1", "localhost"):
        url = server.url(host=socket.getfqdn())
    print(f"store.url={url}", flush=True)
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(True))
    while not stop:
        time.sleep(0.5)
    server.stop()
    print("server stopped; its data stays in", server.folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
