"""runtime's operating-system helpers: the pid check and the atomic folder swap."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

import pytest

from precisionlab.runtime import pid_alive, swap_folders


def _folder(path, **files):
    path.mkdir()
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def _contents(path):
    return {p.name: p.read_text() for p in path.iterdir()}


def test_swap_folders_exchanges_two_folders(tmp_path):
    new, out = _folder(tmp_path / "new", a="new"), _folder(tmp_path / "out", b="old")
    swap_folders(new, out, tmp_path / "old")
    assert _contents(out) == {"a": "new"} and _contents(new) == {"b": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "out"]


class _NoRenameat2:
    """A C library without renameat2 (older glibc, other systems): the fallback's three renames."""


def test_swap_folders_without_renameat2_renames_through_old(tmp_path, monkeypatch):
    monkeypatch.setattr(ctypes, "CDLL", lambda *args, **kwargs: _NoRenameat2())
    new, out = _folder(tmp_path / "new", a="new"), _folder(tmp_path / "out", b="old")
    swap_folders(new, out, tmp_path / "old")
    assert _contents(out) == {"a": "new"} and _contents(new) == {"b": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "out"]


def test_swap_folders_reports_a_real_error(tmp_path):
    if getattr(ctypes.CDLL(None), "renameat2", None) is None:
        pytest.skip("no renameat2 in this C library")
    with pytest.raises(OSError) as err:
        swap_folders(tmp_path / "missing", _folder(tmp_path / "out"), tmp_path / "old")
    assert err.value.errno == 2  # ENOENT: said, not taken for "unsupported here"
    assert (tmp_path / "out").is_dir() and not (tmp_path / "old").exists()


def test_pid_alive_sees_a_live_process_and_not_a_killed_one():
    assert pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert pid_alive(child.pid)
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pid_alive(child.pid) and time.monotonic() < deadline:  # killed, not reaped: a zombie
            time.sleep(0.02)
        assert not pid_alive(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not pid_alive(child.pid)  # reaped: gone


def test_runtime_imports_no_other_precisionlab_module():
    code = ("import sys, precisionlab.runtime\n"
            "print(' '.join(m for m in sys.modules if m.startswith('precisionlab.') and m != 'precisionlab.runtime'))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == []


def test_lazy_exports_import_a_name_on_first_use(tmp_path, monkeypatch):
    """A package built with lazy_exports imports a name's module only when the name is first read."""
    import importlib
    import sys

    pkg = tmp_path / "lazypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from precisionlab.runtime import lazy_exports\n"
                                     "__getattr__, __dir__ = lazy_exports(__name__, {'VALUE': 'lazypkg.heavy'})\n")
    (pkg / "heavy.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("lazypkg")
    assert "lazypkg.heavy" not in sys.modules and "VALUE" in dir(module)
    assert module.VALUE == 42 and "lazypkg.heavy" in sys.modules and vars(module)["VALUE"] == 42
    with pytest.raises(AttributeError, match="has no attribute 'other'"):
        module.other
    for name in ("lazypkg", "lazypkg.heavy"):
        sys.modules.pop(name, None)
