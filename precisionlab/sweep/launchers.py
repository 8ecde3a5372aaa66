"""Which Hydra launcher plugin a sweep's `hydra/launcher=NAME` needs, and the precisionlab extra that
installs it (a job's own side of its launcher, its torch threads and its exit with the sweep, is
precisionlab.run.worker)."""

from __future__ import annotations

__all__ = ["missing_plugin"]

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
