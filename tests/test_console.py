"""The console script (precisionlab.console): a user error is one line and no traceback, and Ctrl-C at
any moment, the imports included, is one line and exit code 130.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from helpers import CLI


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ["sharpness", "--eps", "oops", "--store", "missing.db"],
    ["report", "--store", "missing.db"],
    ["formats", "-f", "E4M3"],
])
def test_console_script_one_line_no_traceback(tmp_path, args):
    proc = subprocess.run([CLI, *args], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def _mapped(pid: int, library: str) -> bool:
    try:
        with open(f"/proc/{pid}/maps") as f:
            return library in f.read()
    except OSError:
        return False


@pytest.mark.slow
def test_interrupt_during_imports_is_one_line_exit_130(tmp_path):
    """SIGINT while the console script imports torch, Hydra, pandas: before, a 25-49 line
    KeyboardInterrupt traceback. Sent once torch's library is mapped (the imports are under way;
    the interpreter's own start-up, before any precisionlab code runs, is Python's), and later."""
    for extra in (0.0, 0.1, 0.3):
        proc = subprocess.Popen([CLI, "formats"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not _mapped(proc.pid, "libtorch") and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(extra)
        proc.send_signal(2)
        out, err = proc.communicate(timeout=60)
        if proc.returncode == 0:  # finished before the signal: nothing to judge
            continue
        assert proc.returncode == 130, (extra, err)
        assert err.strip().splitlines() == ["error: interrupted"], (extra, err)
        assert list(tmp_path.iterdir()) == []
