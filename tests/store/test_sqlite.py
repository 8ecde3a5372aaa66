"""The SQLite results store (precisionlab.store.sqlite): damaged files, read-only files and file systems,
and the temporary files of creators that were killed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import CLI, SWEEP_MICRO
from helpers.store import DEAD_PID, damage, store_with_pending_runs
from precisionlab.cli import app
from precisionlab.store import ResultsStore, StoreError


def test_damaged_store_reads_and_writes_raise_store_error(tmp_path):
    path = tmp_path / "d.db"
    store_with_pending_runs(path).close()
    damage(path)
    store = ResultsStore(path)  # the schema pages are intact: it opens
    for call in (store.sweeps, lambda: store.runs(), lambda: store.status("x"),
                 lambda: store.add_sweep("q"), lambda: store.latest_checkpoint("x")):
        with pytest.raises(StoreError, match="the file is damaged; move it aside"):
            call()


def test_read_only_store_is_reported(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store_with_pending_runs(tmp_path / "s.db").close()
    os.chmod(tmp_path / "s.db", 0o444)
    access = os.access  # root may write anything: the store is what the user may not write
    monkeypatch.setattr(os, "access", lambda p, mode: access(p, mode) and not (str(p).endswith("s.db") and mode & os.W_OK))
    with pytest.raises(StoreError, match=r"is read-only \(no write permission\)"):
        ResultsStore(tmp_path / "s.db")  # writers are still refused up front
    result = CliRunner().invoke(app, ["report", "--store", "s.db"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "reports" / "p" / "report.html").is_file()


def test_read_only_store_object_never_writes(tmp_path):
    store_with_pending_runs(tmp_path / "s.db").close()
    store = ResultsStore(tmp_path / "s.db", read_only=True)
    assert len(store.runs()) == 2
    with pytest.raises(StoreError, match="readonly"):
        store.add_sweep("q")
    with pytest.raises(StoreError, match="does not exist"):
        ResultsStore(tmp_path / "absent.db", read_only=True)
    assert not (tmp_path / "absent.db").exists()


def test_creation_removes_temp_files_of_killed_creators(tmp_path):
    dead = [tmp_path / f"precisionlab.db.{DEAD_PID}.0123abcd.tmp{suffix}" for suffix in ("", "-wal", "-shm")]
    live = tmp_path / f"precisionlab.db.{os.getpid()}.89abcdef.tmp"  # a creator still at work: left alone
    for path in (*dead, live):
        path.write_bytes(b"half a store")
    ResultsStore(tmp_path / "precisionlab.db").close()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["precisionlab.db", live.name])


def _read_only_mount(folder: Path, *command: str) -> subprocess.CompletedProcess:
    """`command` run where `folder` is a read-only bind mount of itself (a private mount namespace:
    the mount vanishes with the process). Skips where mount namespaces are not available."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) here")
    script = f'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && touch "$1/probe" 2>/dev/null && exit 99; shift; exec "$@"'
    proc = subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c", script, "sh", str(folder), *command],
                          capture_output=True, text=True, cwd=folder.parent)
    if proc.returncode == 99 or (proc.returncode != 0 and "unshare" in proc.stderr):
        pytest.skip(f"no read-only bind mount here: {proc.stderr.strip()[:200]}")
    return proc


@pytest.mark.slow
def test_healthy_store_on_a_read_only_file_system(tmp_path):
    """A WAL store (no -wal file) on a read-only bind mount: readers read it, writers are told it is
    read-only. Before, every command called it damaged: SQLite could not create its -shm file."""
    ro = tmp_path / "ro"
    ro.mkdir()
    store_with_pending_runs(ro / "s.db").close()
    assert sorted(p.name for p in ro.iterdir()) == ["s.db"]
    report = _read_only_mount(ro, CLI, "report", "--store", str(ro / "s.db"), "--out", str(tmp_path / "r"))
    assert report.returncode == 0, report.stderr
    assert "2 runs (2 pending)" in report.stdout and (tmp_path / "r" / "report.md").is_file()
    copy = _read_only_mount(ro, CLI, "store", "copy", str(ro / "s.db"), str(tmp_path / "copy.db"))
    assert copy.returncode == 0, copy.stderr
    for args in (["sharpness", "--store", str(ro / "s.db"), "--device", "cpu"],
                 ["sweep", f"store.path={ro / 's.db'}", *SWEEP_MICRO]):
        proc = _read_only_mount(ro, CLI, *args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert "is read-only (a read-only file system)" in lines[0] and "damaged" not in lines[0]
    assert sorted(p.name for p in ro.iterdir()) == ["s.db"]
