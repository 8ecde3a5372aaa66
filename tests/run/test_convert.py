"""The library entry point `precisionlab.convert_model`: preset names and dicts resolve to the recipe
`precisionlab train` composes, the presets listed are the yaml files, bad input is one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

import precisionlab
from helpers import compose_train
from precisionlab.quant.linear import QuantLinear
from precisionlab.quant.linear import convert_model as swap_layers
from precisionlab.quant.recipe import PrecisionConfig
from precisionlab.run.convert import convert_model, precision_node, presets
from precisionlab.train.model import LM, ModelConfig

CONFIGS = Path(precisionlab.__file__).parent.parent / "configs"  # the source tree's presets, read directly


def _model() -> LM:
    torch.manual_seed(0)
    return LM(ModelConfig(n_layer=2, n_embd=32, n_head=2))


def _step(model: nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One forward and backward on a fixed batch: the loss and every parameter's gradient."""
    x = torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(1))
    logits, loss = model(x, x)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("name", ["nvfp4", "mxfp8", "fp8_delayed", "mxfp4_rht_sr"])
def test_a_preset_name_converts_bit_for_bit_as_the_composed_recipe(name):
    oracle = swap_layers(_model(), PrecisionConfig.from_cfg(compose_train(f"precision={name}").precision), seed=3)
    mine = convert_model(_model(), name, seed=3)
    assert [type(m) for m in mine.modules()] == [type(m) for m in oracle.modules()]
    assert any(isinstance(m, QuantLinear) for m in mine.modules())
    (loss_a, grads_a), (loss_b, grads_b) = _step(mine), _step(oracle)
    assert torch.equal(loss_a, loss_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))


def test_a_dict_overrides_the_preset_it_names_as_hydra_overrides_do():
    composed = compose_train("precision=nvfp4", "precision.format=mxfp8", "precision.keep.match=[]").precision
    expected = PrecisionConfig.from_cfg(composed)
    node = precision_node({"preset": "nvfp4", "format": "mxfp8", "keep": {"match": []}})
    assert PrecisionConfig.from_cfg(node) == expected
    assert node["name"] == "nvfp4" and node["x"] == "mxfp8" and node["w"] == "e2m1fn/b16x16/e4m3fn/tensor"


def test_a_dict_without_preset_starts_from_the_defaults_and_the_root_export_resolves_names():
    assert precisionlab.convert_model is convert_model and precisionlab.presets is presets
    model = precisionlab.convert_model(_model(), {"format": "e4m3fn", "exclude": ["lm_head"]})
    quantized = {name for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    linears = {name for name, m in _model().named_modules() if type(m) is nn.Linear}
    assert quantized == linears - {"lm_head"} and quantized


def test_presets_are_the_yaml_files_of_each_group():
    for group in ("precision", "model", "optim"):
        assert presets(group) == sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))
    assert presets() == presets("precision")
    with pytest.raises(ValueError, match="no config group 'precisoin'; the groups are .*precision"):
        presets("precisoin")


@pytest.mark.parametrize("given, fragment", [
    ("nvfp5", "unknown precision preset 'nvfp5'; the presets are bf16, "),
    ({"preset": "nvfp5"}, "unknown precision preset 'nvfp5'"),
    ({"preset": "nvfp4", "exclud": ["lm_head"]}, "precision.exclud is not a config key; precision takes name, format"),
    ({"operands": {"fwd_q": {"format": "e4m3"}}}, "precision.operands.fwd_q is not a config key"),
    ({"format": "e9m9x"}, "precision.format"),
    (3, "precision must be a preset name"),
])
def test_bad_input_is_one_line_naming_what_is_accepted(given, fragment):
    with pytest.raises(ValueError) as err:
        convert_model(_model(), given)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    if isinstance(given, str):
        assert all(name in str(err.value) for name in presets())


def test_attention_casts_on_a_model_without_precisionlab_attention_are_refused_before_any_swap():
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8))
    with pytest.raises(ValueError) as err:
        convert_model(model, "fp8_attention")
    assert "no precisionlab attention module" in str(err.value) and "\n" not in str(err.value)
    assert not any(isinstance(m, QuantLinear) for m in model.modules())  # nothing half-converted
    assert isinstance(convert_model(model, "fp8")[0], QuantLinear)  # the same linear casts without attention's
    converted = convert_model(_model(), "fp8_attention")  # precisionlab's own model has the attention cores
    assert any(type(m).__name__ == "QuantAttend" for m in converted.modules())
