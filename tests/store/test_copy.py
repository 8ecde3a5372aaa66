"""`precisionlab store copy` (precisionlab.store.copy): refusals that leave both stores as they were.
"""

from __future__ import annotations

import sqlite3

from typer.testing import CliRunner

from helpers import one_line_exit_2
from helpers.store import store_with_pending_runs
from precisionlab.cli import app


def test_store_copy_into_a_link_to_its_source_is_refused(tmp_path, monkeypatch):
    """A destination that is the source through a symbolic link: before, the store was copied into itself."""
    monkeypatch.chdir(tmp_path)
    store_with_pending_runs(tmp_path / "s.db").close()
    (tmp_path / "link.db").symlink_to(tmp_path / "s.db")
    before = (tmp_path / "s.db").read_bytes()
    one_line_exit_2(CliRunner().invoke(app, ["store", "copy", "s.db", "link.db"]), "the same results store")
    assert (tmp_path / "s.db").read_bytes() == before


def test_store_copy_to_a_newer_store_leaves_no_files_beside_either(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store_with_pending_runs(tmp_path / "s.db").close()
    store_with_pending_runs(tmp_path / "new.db").close()
    with sqlite3.connect(tmp_path / "new.db") as conn:
        conn.execute("UPDATE meta SET value='999' WHERE key='schema_version'")
    conn.close()
    one_line_exit_2(CliRunner().invoke(app, ["store", "copy", "s.db", "new.db"]), "newer than this precisionlab reads")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.db", "s.db"]  # no -wal/-shm (the source's neither)
