"""Cast attention matmuls in Hugging Face transformers models, through their attention-function registry.

A transformers model computes attention in a function it looks up by name in
`transformers.AttentionInterface` (`config._attn_implementation`: "sdpa", "eager", ...), called as

  fn(module, query, key, value, attention_mask, scaling=..., dropout=..., **kwargs) -> (output, weights)

with query (B, H, T, D), key and value (B, Hkv, T, D) (grouped-query attention: Hkv divides H) and
output (B, T, H, D). When `precision.attention` casts something, `convert_hf_attention` registers the
function "precisionlab" (and, for it, transformers' SDPA mask builder: a boolean mask, or none for
plain causal attention), gives each attention module a `QuantAttend` child `attend` (its call count
in the state_dict, its seeds keyed by the module's index as the LM's blocks'), and switches the model
to "precisionlab" with `set_attn_implementation`. The attention modules' forward is not touched: it
calls the registered function, which repeats key and value heads to H (as transformers' repeat_kv)
and hands them to the module's `attend`:

  S = cast(q) . cast(k)^T * scaling    the model's scaling (GPT-2 may scale by 1, or per layer)
  p = softmax(S + mask)                the mask transformers built (additive: masked scores get the
                                       dtype's lowest value, as its eager attention), else causal
  y = cast(p) . cast(v)

with the casts, axes and backward GEMMs of `precisionlab.quant.attention`. An attention module with
no `attend` (one convert_model did not reach, e.g. another model built on the same config object)
attends with transformers' SDPA, uncast. When `precision.attention` casts nothing the model keeps
its own implementation and gains no module.

transformers is imported only here, only inside functions, and only for a model that is already a
transformers model (importing precisionlab never imports it).
"""

from __future__ import annotations

import sys

import torch
import torch.nn as nn

from precisionlab.quant.attention import Attend, QuantAttend
from precisionlab.quant.operands import AttentionCasts

__all__ = ["IMPLEMENTATION", "convert_hf_attention", "hf_attention_modules", "is_hf_model", "precisionlab_attention"]

IMPLEMENTATION = "precisionlab"  # the name the attention function is registered under
_CORE = "attend"  # the attention module's child that casts
_UNSUPPORTED = ("softcap", "s_aux", "sinks", "position_bias")  # attention variants the cast path does not write out


def is_hf_model(model: nn.Module) -> bool:
    """Whether `model` is a transformers `PreTrainedModel` (whose module is loaded already if so: nothing
    is imported here)."""
    modeling = sys.modules.get("transformers.modeling_utils")
    return modeling is not None and isinstance(model, modeling.PreTrainedModel)


def hf_attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of the attention modules of a transformers model, in order (none otherwise):
    the `*Attention` modules that hold the model config and a layer index, which look their attention
    function up in the registry."""
    if not is_hf_model(model):
        return []
    return [(name, m) for name, m in model.named_modules()
            if type(m).__name__.endswith("Attention") and hasattr(m, "config") and hasattr(m, "layer_idx")]


def precisionlab_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                           **kwargs) -> tuple[torch.Tensor, None]:
    """The registered attention function (see the module docstring): (B, T, H, D) output, no weights."""
    attend = module._modules.get(_CORE)
    if not isinstance(attend, QuantAttend):  # not converted: transformers' default, uncast
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    for name in _UNSUPPORTED:
        if kwargs.get(name) is not None:
            raise ValueError(f"precision.attention casts {type(module).__name__}, which uses {name}; the cast "
                             "attention path writes out plain softmax attention only; set precision.attention.format=fp32")
    groups = query.shape[1] // key.shape[1]  # grouped-query attention: each key/value head serves `groups` heads
    key, value = _repeat_kv(key, groups), _repeat_kv(value, groups)
    is_causal = kwargs.get("is_causal")
    causal = query.shape[2] > 1 and (getattr(module, "is_causal", True) if is_causal is None else is_causal)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    y = attend(query, key, value, scaling=scaling, mask=attention_mask, dropout=dropout, causal=causal)
    return y.transpose(1, 2).contiguous(), None


def _repeat_kv(t: torch.Tensor, n: int) -> torch.Tensor:
    """(B, Hkv, T, D) -> (B, Hkv * n, T, D), each head n times in a row (transformers' repeat_kv)."""
    if n == 1:
        return t
    b, h, length, d = t.shape
    return t[:, :, None].expand(b, h, n, length, d).reshape(b, h * n, length, d)


def register() -> None:
    """Register "precisionlab" in transformers' attention and attention-mask registries (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, precisionlab_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)


def convert_hf_attention(model: nn.Module, casts: AttentionCasts, seed: int = 0) -> nn.Module:
    """Give every attention module of a transformers `model` a `QuantAttend` child with `casts` and
    switch the model to the "precisionlab" attention function, in place; nothing when `casts` casts
    nothing or `model` is no transformers model. `seed`: the run seed. Returns `model`. A model whose
    attention does not go through the registry is a one-line ValueError."""
    modules = hf_attention_modules(model)
    if casts.is_fp32 or not modules:
        return model
    register()
    for index, (name, module) in enumerate(modules):  # index: the block, which seeds its random draws
        if hasattr(module, _CORE) and not isinstance(getattr(module, _CORE), QuantAttend):
            raise ValueError(f"{type(module).__name__} already has an attribute {_CORE!r}; precision.attention "
                             "cannot add its cast core there; set precision.attention.format=fp32")
        core_name = f"{name}.{_CORE}"
        setattr(module, _CORE, QuantAttend(Attend(0.0), casts, index, seed, core_name).train(module.training))
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(IMPLEMENTATION)
    else:  # transformers before set_attn_implementation
        model.config._attn_implementation = IMPLEMENTATION
    if model.config._attn_implementation != IMPLEMENTATION:
        raise ValueError(f"precision.attention casts attention, but {type(model).__name__} does not dispatch its "
                         "attention through transformers' AttentionInterface; set precision.attention.format=fp32")
    return model
