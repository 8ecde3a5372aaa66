"""What a sweep's jobs need from their launcher: how many torch threads one job gets, so jobs sharing
a machine do not oversubscribe it, and (joblib) worker processes that end with the sweep."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["threads_per_job", "exit_with_parent", "missing_plugin"]

_watching = False

# hydra/launcher=NAME -> (the Hydra plugin package it needs, the precisionlab extra that installs it)
_PLUGINS = {
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    "ray_cluster": ("hydra_plugins.hydra_ray_launcher", "ray"),
    "ray": ("hydra_plugins.hydra_ray_launcher", "ray"),
    "ray_aws": ("hydra_plugins.hydra_ray_launcher", "ray"),
}


def missing_plugin(overrides: list[str]) -> str | None:
    """One line naming the extra to install when `overrides` pick a launcher whose Hydra plugin is
    not installed (Hydra itself would only say that a config could not be loaded); None otherwise."""
    import importlib.util

    for override in overrides:
        key, _, name = override.partition("=")
        if key.lstrip("+~") != "hydra/launcher" or name not in _PLUGINS:
            continue
        plugin, extra = _PLUGINS[name]
        try:
            found = importlib.util.find_spec(plugin) is not None
        except ModuleNotFoundError:  # no hydra_plugins namespace at all
            found = False
        if not found:
            return f"hydra/launcher={name} needs the {plugin.rsplit('.', 1)[1]} plugin; pip install 'precisionlab[{extra}]'"
    return None


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
    _watching, parent = True, os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)  # like the kill of the sweep itself: no cleanup that could write a wrong outcome

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
