"""A run's preset as it ran (precisionlab.analysis.presets): the preset's bare name where the run's
config is that preset, `PRESET+key=value` for each key an override changed, a sibling interpolation
(`x: ${.format}`) counted once, and a name that is no preset kept as it stands."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from helpers import compose_train
from precisionlab.analysis.presets import preset_changes, preset_label


def stored(*overrides: str) -> dict:
    """A run's config as the store keeps it: resolved, plain containers."""
    return OmegaConf.to_container(compose_train(*overrides), resolve=True)


@pytest.mark.parametrize("overrides, label", [
    (["precision=nvfp4"], "nvfp4"),
    (["precision=nvfp4", "precision.x=e8m7"], "nvfp4+x=e8m7"),
    (["precision=mask", "precision.format=e8m3"], "mask+format=e8m3"),  # x, w, grad follow format: one change
    (["precision=mask", "precision.format=e8m3", "precision.grad=e5m2"], "mask+format=e8m3+grad=e5m2"),
    (["precision=bf16", "train.steps=7", "seed=3"], "bf16"),  # keys the preset does not set are no change
    (["precision=fp8", "precision.name=mine"], "mine"),  # no such preset: the name as it stands
])
def test_a_runs_label_names_its_preset_and_what_changed(overrides, label):
    assert preset_label(stored(*overrides)) == label


def test_keys_outside_precision_that_a_preset_sets_count_with_their_full_name():
    """msamp_o2 sets AdamW's moment formats (optim.*): changing one is a change of the preset."""
    base = stored("precision=msamp_o2")
    key, value = next((k, v) for k, v in base["optim"].items() if k.startswith("exp_avg") and v not in (None, "fp32"))
    changed = stored("precision=msamp_o2", f"optim.{key}=fp32")
    assert preset_changes(base) == [] and preset_changes(changed) == [f"optim.{key}=fp32"]
    assert preset_label(changed) == f"msamp_o2+optim.{key}=fp32" and value != "fp32"


def test_configs_naming_no_preset():
    assert preset_label({"precision": {"format": "e8m3"}}) is None and preset_changes({"precision": {}}) is None
    assert preset_changes({"precision": {"name": "../../etc"}}) is None  # not a preset name: never composed
