"""What a sweep's job needs from its launcher (precisionlab.run.worker): torch threads per job, and a
worker process that ends with its sweep.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from precisionlab.run.worker import threads_per_job


@pytest.mark.parametrize("launcher, cores, threads", [
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}, 2, 1),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}, 8, 4),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": -1}, 8, 1),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": -2}, 8, 1),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 16}, 8, 1),
    ({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, 8, 8),
    ({"_target_": "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher", "ray": {"remote": {"num_cpus": 3}}}, 8, 3),
    ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", "cpus_per_task": 4}, 8, 4),
])
def test_threads_per_job_share_the_cores(monkeypatch, launcher, cores, threads):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert threads_per_job(launcher) == threads


def test_launcher_worker_exits_when_its_parent_dies(tmp_path):
    """A worker process whose sweep is killed ends itself (before: it trained on, reparented)."""
    script = textwrap.dedent("""
        import multiprocessing, os, sys, time
        from precisionlab.run.worker import exit_with_parent

        def worker():
            exit_with_parent(interval=0.05)
            time.sleep(120)

        if __name__ == "__main__":
            child = multiprocessing.get_context("fork").Process(target=worker, name="LokyProcess-1")
            child.start()
            print(child.pid, flush=True)
            os._exit(0)  # the sweep dies without a word to its worker
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    pid = int(proc.stdout)
    deadline = time.monotonic() + 30
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(pid)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False
