"""Which launcher plugin a sweep needs (precisionlab.sweep.launchers): a launcher whose Hydra plugin is
not installed is named with the pip extra that installs it; anything else passes."""

from __future__ import annotations

import importlib.util

import pytest

from precisionlab.sweep.launchers import missing_plugin


@pytest.fixture
def installed(monkeypatch):
    """Which plugin packages find_spec finds: the set it returns, to fill in per test."""
    found: set[str] = set()
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name.startswith("hydra_plugins.hydra_submitit_launcher") or name.startswith("hydra_plugins.hydra_ray_launcher"):
            return object() if name in found else None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    return found


@pytest.mark.parametrize("override, extra", [
    ("hydra/launcher=slurm", "slurm"), ("hydra/launcher=submitit_local", "slurm"), ("+hydra/launcher=submitit_slurm", "slurm"),
    ("hydra/launcher=ray", "ray"), ("hydra/launcher=ray_cluster", "ray"), ("hydra/launcher=ray_aws", "ray"),
])
def test_a_missing_plugin_names_its_extra(installed, override, extra):
    message = missing_plugin(["seed=0,1", override])
    assert message is not None and f"pip install 'precisionlab[{extra}]'" in message
    assert message.startswith(f"{override.lstrip('+')} needs the ")


def test_an_installed_plugin_and_other_launchers_pass(installed):
    installed.update({"hydra_plugins.hydra_submitit_launcher", "hydra_plugins.hydra_ray_launcher"})
    assert missing_plugin(["hydra/launcher=slurm", "hydra/launcher=ray"]) is None
    installed.clear()
    assert missing_plugin(["hydra/launcher=joblib", "hydra/launcher=basic", "seed=0", "hydra.launcher.n_jobs=2"]) is None
    assert missing_plugin([]) is None
