"""The casts as a library: `precisionlab.convert_model(model, precision)` on any model, and the presets.

`precision` may be
  - a preset name, a file of configs/precision/ (`"nvfp4"`; `precisionlab.presets()` lists them),
    composed as `precisionlab train precision=nvfp4` composes it;
  - a dict of precision keys, on top of a preset when it has the key `preset`
    (`{"preset": "nvfp4", "exclude": ["lm_head"]}`), else on top of the schema's defaults (fp32:
    `{"format": "e4m3fn", "scaling": "tensor"}`); dotted keys are not split: nest them
    (`{"operands": {"fwd_x": {"format": "e5m2"}}}`);
  - a `precision` config node (DictConfig) or a built recipe (`PrecisionConfig`).
An unknown preset, key or value is a ValueError of one line naming what is accepted; so is a recipe
that casts attention (`precision.attention`) for a model without precisionlab's attention module
(`Attend`), which those casts need: they would silently cast nothing.

The quant layer, which swaps the layers (`precisionlab.quant.linear.convert_model`), knows no
presets (they are the config layer's); this module, above both, resolves a name and hands the
recipe down.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn as nn
from omegaconf import OmegaConf

from precisionlab.analysis.presets import composed_preset, preset_names
from precisionlab.quant import linear
from precisionlab.quant.attention import Attend
from precisionlab.quant.recipe import PrecisionConfig, typed

__all__ = ["convert_model", "presets", "precision_node", "PRESET_KEY"]

PRESET_KEY = "preset"  # in a dict of precision keys: the preset they override


def presets(group: str = "precision") -> list[str]:
    """The presets of a config group (default `precision`), sorted: what `convert_model` and
    `precisionlab train precision=NAME` accept."""
    return preset_names(group)


def precision_node(precision: str | Mapping[str, Any]) -> dict[str, Any]:
    """The full `precision` node (every key, resolved, a plain dict) that a preset name or a dict of
    keys (with or without `preset`) means; a ValueError of one line for an unknown preset, key or value."""
    if isinstance(precision, str):
        precision = {PRESET_KEY: precision}
    if not isinstance(precision, Mapping):
        raise ValueError(f"precision must be a preset name ({', '.join(presets())}), a dict of precision keys "
                         f"or a PrecisionConfig; got {type(precision).__name__}")
    overrides = OmegaConf.to_container(precision) if OmegaConf.is_config(precision) else dict(precision)
    name = overrides.pop(PRESET_KEY, None)
    if name is not None and not isinstance(name, str):
        raise ValueError(f"precision.{PRESET_KEY} must be a preset name ({', '.join(presets())}); got {name!r}")
    base = composed_preset(name) if name is not None else {}
    try:
        merged = OmegaConf.merge(OmegaConf.create(base), OmegaConf.create(overrides))
    except Exception as err:  # e.g. a dict where the preset has a string
        raise ValueError(f"precision: {str(err).splitlines()[0]}") from None
    node = OmegaConf.to_container(typed(merged), resolve=True)  # typed: an unknown key or bad type, one line
    PrecisionConfig.from_cfg(node)  # a value the casts cannot take (a format name, ...), one line
    return node


def convert_model(model: nn.Module, precision: str | Mapping[str, Any] | PrecisionConfig, seed: int = 0) -> nn.Module:
    """Swap `model`'s `nn.Linear` layers (and attention cores where the recipe casts attention) for
    simulated low-precision ones, in place; returns `model`. `precision`: a preset name, a dict of
    keys (`preset` for the one they override), a precision node or a `PrecisionConfig` (module
    docstring). `seed` keys stochastic rounding and Hadamard signs."""
    if not isinstance(precision, PrecisionConfig):
        precision = PrecisionConfig.from_cfg(precision_node(precision))
    if not precision.attention.is_fp32 and not any(type(m) is Attend for m in model.modules()):
        # checked before any swap: a half-applied recipe would pass for the whole one
        raise ValueError("precision.attention casts the attention matmuls, but the model has no precisionlab attention "
                         "module (precisionlab.quant.attention.Attend) to cast; use a recipe without attention casts "
                         "(precision.attention.format fp32 and no attention tensor's format set; e.g. fp8 for fp8_attention)")
    return linear.convert_model(model, precision, seed=seed)
