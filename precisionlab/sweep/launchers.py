"""How many torch threads one job of a launcher gets, so jobs sharing a machine do not oversubscribe it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = ["threads_per_job"]


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
