"""What a sweep's job needs from its launcher: how many torch threads one job gets, so jobs sharing
a machine do not oversubscribe it, and (joblib) worker processes that end with the sweep."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["threads_per_job", "exit_with_parent"]

_watching = False


def threads_per_job(launcher: Mapping[str, Any]) -> int:
    """Torch threads for one job, so jobs sharing a machine do not oversubscribe it:
    joblib: the cores this process may use / n_jobs; Ray: the job's ray.remote.num_cpus;
    submitit: its cpus_per_task; otherwise all the cores this process may use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    target = str(launcher.get("_target_", ""))
    if "joblib" in target:
        jobs = int(launcher.get("n_jobs") or 1)
        if jobs < 0:  # joblib: -1 all cores, -2 all but one, ...
            jobs = max(1, cores + 1 + jobs)
        return max(1, cores // jobs)
    cpus = None
    if "ray" in target:
        cpus = ((launcher.get("ray") or {}).get("remote") or {}).get("num_cpus")
    elif "submitit" in target:
        cpus = launcher.get("cpus_per_task")
    return max(1, min(cores, int(cpus))) if cpus else cores


def exit_with_parent(interval: float = 1.0) -> None:
    """In a launcher's worker process (joblib's loky workers), end the process once the sweep
    that started it is gone. A killed sweep's workers are reparented and would otherwise train
    on, then idle for loky's timeout, and hold joblib's /dev/shm semaphores and memmapping
    folders until they exit (their resource trackers clean those up then). The run in progress
    is left `running` with a dead pid: the next sweep resumes it. No-op in the main process
    (the sequential launcher, n_jobs=1), and started once per process."""
    global _watching
    if _watching or multiprocessing.current_process().name == "MainProcess":
        return
    # the pid of the process that started this one, as multiprocessing recorded it: os.getppid() here
    # would race a parent that dies before this line (it would name the reaper, and never change)
    origin = multiprocessing.parent_process()
    _watching, parent = True, origin.pid if origin is not None else os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)  # like the kill of the sweep itself: no cleanup that could write a wrong outcome

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
