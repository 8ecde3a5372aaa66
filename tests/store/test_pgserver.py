"""The throwaway PostgreSQL server (precisionlab.store.pgserver): where it finds PostgreSQL's programs, the
port it picks, and a server whose data and password survive a stop and a start."""

from __future__ import annotations

import os
import socket
import stat

import pytest

from precisionlab.store import pgserver
from precisionlab.store.pgserver import PostgresNotFound, find_bin, free_port


def _executable(folder, name):
    path = folder / name
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)


def test_find_bin_prefers_path(tmp_path, monkeypatch):
    _executable(tmp_path, "pg_ctl")
    _executable(tmp_path, "initdb")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_bin() == tmp_path.resolve()


def test_find_bin_takes_the_newest_installed_version_by_number(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # pg_ctl alone on PATH is not enough
    _executable(tmp_path, "pg_ctl")
    installed = [f"/usr/lib/postgresql/{v}/bin/pg_ctl" for v in ("9", "15", "10")]
    monkeypatch.setattr(pgserver.glob, "glob", lambda pattern: list(installed))
    assert str(find_bin()) == "/usr/lib/postgresql/15/bin"  # 15 > 10 > 9, though "9" sorts last as text


def test_find_bin_says_how_to_install_when_nothing_is_there(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(pgserver.glob, "glob", lambda pattern: [])
    with pytest.raises(PostgresNotFound, match="apt-get install postgresql"):
        find_bin()


def test_free_port_can_be_bound():
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # raises if the port was in use


def _refused(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_a_server_keeps_its_data_and_password_across_stop_and_start(own_postgres_server):
    import psycopg

    server = own_postgres_server
    password = server.password
    assert stat.S_IMODE(os.stat(server.folder / "password").st_mode) == 0o600
    assert server.url() == f"postgresql://precisionlab:{password}@127.0.0.1:{server.port}/precisionlab"
    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (x INTEGER)")
        conn.execute("INSERT INTO kept VALUES (42)")
    server.stop()
    assert _refused(server.port) and not (server.data / "postmaster.pid").exists()
    assert server.start() == server.url()
    assert server.password == password  # the folder is reused, not initialised again
    with psycopg.connect(server.url(), autocommit=True) as conn:
        assert conn.execute("SELECT x FROM kept").fetchall() == [(42,)]
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(server.url().replace(password, password + "x"), connect_timeout=5)
