"""Hugging Face causal LMs built from a config and trained from scratch as our own models (`model.arch=hf`).

`model.hf` holds `arch` (one of ARCHS that the installed transformers has), optionally
`attn_implementation` (sdpa, the default, or eager), and Hugging Face's own config keys for that
architecture (`hidden_size`, `num_hidden_layers`, ...). What the builder adds:

  vocab_size, positions  from `model.vocab_size` and `model.block_size` (HF's `vocab_size` and
                         `max_position_embeddings`, GPT-2's `n_positions`): the loop reads those two
                         (ln V, train.seq_len), so they are set there, never in `model.hf`
  CONVENTIONS            the stability-study defaults our own models have, per architecture:
                         no dropout, norm epsilon 1e-5, RoPE base 10000, no padding token, no biases where the
                         architecture has the option (GPT-2 and Qwen2's q/k/v always have them),
                         as many key/value heads as heads (no grouped-query attention);
                         a key given in `model.hf` wins
  RENAMED                one spelling for every architecture: `intermediate_size` is GPT-2's `n_inner`;
                         `rope_theta` goes into `rope_parameters` where the config class has that
                         (GPT-2's config maps hidden_size, num_attention_heads, num_hidden_layers itself)

The model is the architecture's own causal-LM class, initialised by its own `_init_weights`
(`initializer_range`) from torch's global RNG, so `torch.manual_seed(cfg.seed)` seeds it as it seeds
our models. `hf_model` returns an instance of a subclass (`_ours`) whose `forward(idx, targets)` is the
loop's: logits (B, T, V) and the mean cross-entropy against `targets`, which are already shifted
(HF's `labels=` would shift them again), computed exactly as `precisionlab.train.model.LM` computes it.
Being a subclass, not a wrapper, its modules and state_dict keys are HF's own
(`model.layers.0.self_attn.q_proj`, `lm_head`, GPT-2's `transformer.h.0.attn.c_attn`), so
`precision.exclude`, `precision.keep.match` and diagnostics sites read as HF users expect.

transformers is imported only here, inside functions: the base install works without it.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from precisionlab.train.errors import ConfigError
from precisionlab.train.model import ModelConfig

__all__ = ["ARCHS", "CONVENTIONS", "hf_config", "hf_model", "available_archs", "step_bytes"]

ARCHS = ("llama", "gpt2", "qwen2", "olmo2")  # offered; `available_archs` says which the installed transformers has
OPTIONS = ("arch", "attn_implementation")  # keys of model.hf that are no HF config keys
ATTENTION = ("sdpa", "eager")
INSTALL = 'pip install "precisionlab[hf]"'

# The stability-study defaults of our own models, in each architecture's spelling (a model.hf key wins).
# No pad token: an embedding's padding_idx row (OLMo2's default 1) would never learn.
_ROPE = {"rope_theta": 10000.0, "rms_norm_eps": 1e-5, "attention_dropout": 0.0, "pad_token_id": None}
CONVENTIONS: Mapping[str, Mapping[str, Any]] = {
    "llama": {**_ROPE, "attention_bias": False, "mlp_bias": False},
    "qwen2": {**_ROPE, "use_sliding_window": False},  # q, k, v projections always have biases
    "olmo2": {**_ROPE, "attention_bias": False},
    # GPT-2 has biases and LayerNorm; its token ids 50256 would lie outside small vocabularies
    "gpt2": {"layer_norm_epsilon": 1e-5, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
             "bos_token_id": None, "eos_token_id": None, "pad_token_id": None},
}
RENAMED: Mapping[str, Mapping[str, str]] = {"gpt2": {"intermediate_size": "n_inner"}}
# HF keys set from model.vocab_size and model.block_size
_POSITIONS = {"gpt2": "n_positions"}
_SET_BY_US = {"vocab_size": "model.vocab_size", "max_position_embeddings": "model.block_size",
              "n_positions": "model.block_size", "n_ctx": "model.block_size"}


def _transformers():
    """The transformers module, or ConfigError (one line) naming the extra to install."""
    try:
        return importlib.import_module("transformers")
    except ImportError as err:
        raise ConfigError(f"model.arch=hf needs transformers ({err}): {INSTALL}") from None


def available_archs() -> tuple[str, ...]:
    """The architectures of ARCHS that the installed transformers has."""
    mapping = _transformers().CONFIG_MAPPING
    return tuple(arch for arch in ARCHS if arch in mapping)


def _known_keys(config_class) -> set[str]:
    """The keys a config class takes: its __init__'s parameters, attribute_map's aliases, its default's attributes."""
    keys = set(inspect.signature(config_class.__init__).parameters) - {"self", "kwargs"}
    return keys | set(config_class.attribute_map) | set(config_class().to_dict())


def hf_config(model: Mapping[str, Any]):
    """The Hugging Face config of a `model` config node with arch=hf (a dict or DictConfig); ConfigError
    (one line naming the key and what is accepted) for anything it cannot build."""
    transformers = _transformers()
    hf = dict(model.get("hf") or {})
    archs = available_archs()
    arch = hf.pop("arch", None)
    if arch not in archs:
        raise ConfigError(f"model.hf.arch must be one of {', '.join(archs)} (transformers "
                          f"{transformers.__version__}); got {arch!r}")
    attention = hf.pop("attn_implementation", "sdpa")
    if attention not in ATTENTION:
        raise ConfigError(f"model.hf.attn_implementation must be one of {', '.join(ATTENTION)}; got {attention!r}")
    config_class = transformers.CONFIG_MAPPING[arch]
    known = _known_keys(config_class)
    keys = dict(CONVENTIONS[arch])
    for key, value in hf.items():
        if key in _SET_BY_US:
            raise ConfigError(f"model.hf.{key} is set from {_SET_BY_US[key]} for model.arch=hf; set that instead")
        name = RENAMED.get(arch, {}).get(key, key)
        if name not in known and not (name == "rope_theta" and "rope_parameters" in known):
            raise ConfigError(f"model.hf.{key} is not a config key of {config_class.__name__} (model.hf.arch={arch}); "
                              f"it takes {', '.join(sorted(known - set(_SET_BY_US)))}")
        keys[name] = value
    if "rope_theta" in keys and "rope_theta" not in known:  # transformers >= 5: inside rope_parameters
        theta = keys.pop("rope_theta")
        if "rope_parameters" in known:
            keys["rope_parameters"] = {"rope_type": "default", "rope_theta": float(theta), **(keys.get("rope_parameters") or {})}
    keys = {k: v for k, v in keys.items() if k in known or k == "rope_theta"}
    if "num_key_value_heads" in known and "num_key_value_heads" not in keys:  # Qwen2's default is 32: ours is MHA
        keys["num_key_value_heads"] = keys.get("num_attention_heads")
    keys["vocab_size"] = int(model["vocab_size"])
    keys[_POSITIONS.get(arch, "max_position_embeddings")] = int(model["block_size"])
    defaults = config_class().to_dict()
    _check_shapes(lambda key: keys.get(key, keys.get(config_class.attribute_map.get(key),
                                                     defaults.get(config_class.attribute_map.get(key, key)))), arch)
    try:
        config = config_class(**keys)
    except Exception as err:  # what the config class itself validates
        problem = " ".join(str(err).split())
        raise ConfigError(f"model.hf does not make a {config_class.__name__}: {problem}") from None
    config._attn_implementation = attention
    return config


def _check_shapes(get, arch: str) -> None:
    """Sizes that must divide, as one line naming the key (`get(key)`: a config key's value)."""
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads"):
        value = get(key)
        if not (isinstance(value, int) and value > 0):
            raise ConfigError(f"model.hf.{key} must be a positive integer; got {value!r}")
    width, heads = get("hidden_size"), get("num_attention_heads")
    if width % heads:
        raise ConfigError(f"model.hf.hidden_size ({width}) must be divisible by model.hf.num_attention_heads; got {heads}")
    kv = get("num_key_value_heads")
    if kv is not None and (not isinstance(kv, int) or kv <= 0 or heads % kv):
        raise ConfigError(f"model.hf.num_key_value_heads must divide model.hf.num_attention_heads ({heads}); got {kv}")
    head_dim = get("head_dim") or width // heads
    if arch != "gpt2" and head_dim % 2:
        raise ConfigError(f"model.hf.arch={arch} (RoPE) needs an even head size, hidden_size ({width}) // "
                          f"num_attention_heads; got {heads}")


def hf_model(model: Mapping[str, Any]) -> torch.nn.Module:
    """The Hugging Face model of a `model` config node with arch=hf, freshly initialised (seed torch first),
    with our `forward(idx, targets)` and `num_params()`."""
    config = hf_config(model)
    base = _transformers().MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    built = _ours(base)(config)
    built.uncast_attention = config._attn_implementation  # a recipe's attention casts switch the config's
    return built


@functools.lru_cache(maxsize=None)
def _ours(base: type) -> type:
    """A subclass of HF's causal-LM class `base` with the loop's interface: same modules, same names."""

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        if idx.shape[1] > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {idx.shape[1]} exceeds model.block_size {self.config.max_position_embeddings}")
        logits = base.forward(self, input_ids=idx, use_cache=False).logits  # (B, T, V)
        loss = None
        if targets is not None:  # already shifted: no `labels=`, which would shift them again
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def num_params(self) -> int:
        """Parameters, counting a tied embedding once."""
        return sum(p.numel() for p in self.parameters())

    def fresh(self) -> torch.nn.Module:
        """A new model of this config, without casts (its weights freshly drawn: load them)."""
        config = copy.deepcopy(self.config)
        config._attn_implementation = getattr(self, "uncast_attention", config._attn_implementation)
        twin = type(self)(config)
        twin.uncast_attention = config._attn_implementation
        return twin

    return type(base.__name__, (base,), {"forward": forward, "num_params": num_params, "fresh": fresh,
                                         "__module__": __name__, "__doc__": base.__doc__})


def step_bytes(model: Mapping[str, Any], batch_size: int, seq_len: int) -> int:
    """`ModelConfig.step_bytes`'s lower bound for a `model` node with arch=hf, from its HF sizes:
    16 bytes a parameter (weights, gradients, AdamW's moments), the activations of our models
    of that width, depth and MLP width (a lower bound here too). 0 when the config cannot be read
    (validation reports why)."""
    hf = dict(model.get("hf") or {})
    width, layers = hf.get("hidden_size"), hf.get("num_hidden_layers")
    heads = hf.get("num_attention_heads")
    mlp = hf.get("intermediate_size")
    if not all(isinstance(v, int) and v > 0 for v in (width, layers, heads)) or width % heads:
        return 0
    return ModelConfig(arch="llama", vocab_size=int(model["vocab_size"]), block_size=int(model["block_size"]),
                       n_layer=layers, n_head=heads, n_embd=width, mlp_hidden=mlp if isinstance(mlp, int) else None,
                       tie_weights=bool(hf.get("tie_word_embeddings", True))).step_bytes(batch_size, seq_len)
