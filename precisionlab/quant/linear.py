"""Simulated low-precision GEMMs: a module swap of every `nn.Linear` (and transformers' `Conv1D`).

`convert_model(model, precision)` replaces each `nn.Linear` (except those matching
`precision.exclude`) by a `QuantLinear` whose autograd Function fake-quantizes the operands
of its three GEMMs with `precisionlab.quantize`, each along that GEMM's reduction axis and
from the high-precision tensor, and multiplies in fp32 (fp32 accumulation; with
`precision.accumulate` the chosen GEMMs keep their partial sums in a reduced format instead,
`precisionlab.numerics.accumulate`):

  forward      y  = fwd_x(x) . fwd_w(W)^T + b          reduction over in
  input grad   dx = dgrad_g(g) . dgrad_w(W)            reduction over out
  weight grad  dW = wgrad_g(g)^T . wgrad_x(x)          reduction over tokens
  bias grad    db = sum of g                           bias and its gradient stay fp32

`precision.weight_grad` also casts dW itself, after its GEMM (MS-AMP's FP8 weight gradients).

Hugging Face's GPT-2 family computes its projections (c_attn, c_proj, c_fc) with transformers'
`Conv1D`, a linear layer whose weight is stored transposed, (in, out), y = x . W + b. convert_model
swaps it for a `QuantConv1D`, which runs the same Function on the view W^T (out, in): the same six
casts along the same reduction axes (a cast reads its tensor's values, not its memory layout), so a
converted Conv1D gives the bits of a QuantLinear holding W^T, keeps its own Parameters (ties and
optimizer state survive), and counts among the converted layers for seeds, keep and exclude.
transformers is never imported here: a Conv1D is recognised by its class's name and module.

(`precisionlab.quant.operands` says how the six casts are configured and when one cast serves
two operands.) With a Hadamard transform on a GEMM both its operands are multiplied along
the reduction axis by the same orthogonal block-diagonal matrix before their casts.

Stochastic rounding and per-call Hadamard signs are reproducible: each draw gets an explicit
seed mixed from the run seed, the layer's index, the layer's call count and the operand's
seed slot; the call count is part of the module's state_dict, so a resumed run draws the
same random bits as an uninterrupted one.

Each cast names its site, (layer name, operand), for a cast observer (`operands.observing_casts`:
the numerical diagnostics' saturation, flush-to-zero and cast error); without one that costs nothing.
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import re
from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from precisionlab.numerics.hadamard import hadamard_matrix, hadamard_transform, random_signs
from precisionlab.quant.attention import Attend, convert_attention
from precisionlab.quant.hf import convert_hf_attention, hf_attention_modules
from precisionlab.quant.operands import GEMMS, OPERANDS, CountsCalls, LayerCasts, mix_seed
from precisionlab.quant.recipe import PrecisionConfig

log = logging.getLogger(__name__)

__all__ = ["DELAYED_STATE", "QuantLinear", "QuantConv1D", "convert_model", "check_hadamard_dims", "is_conv1d"]

DELAYED_STATE = ("amax_history", "delayed_scale")  # a QuantLinear's delayed-scaling buffers, when it has them
_NO_SEEDS = (0,) * 9
_BLOCK_NAME = re.compile(r"(?:^|\.)(?:blocks|layers|h)\.(\d+)\.")  # blocks.<i>. (LM), model.layers.<i>., transformer.h.<i>. (HF)


class _QuantLinearFn(torch.autograd.Function):
    """seeds: the six operands' by SEED_SLOT, then the three GEMMs' Hadamard-sign seeds."""

    @staticmethod
    def forward(ctx, x, weight, bias, casts: LayerCasts, seeds: tuple[int, ...], history=None, name: str = ""):
        xa, wa = x, weight  # (..., in), (out, in)
        if casts.rotates("fwd"):
            h = _hadamard(casts, seeds[6], x.device)
            xa, wa = hadamard_transform(x, h, -1), hadamard_transform(weight, h, -1)
        x_q = casts.fwd_x(xa, seeds[0], axis=-1, history=_rows(history, "fwd_x"), site=(name, "fwd_x"))
        w_q = casts.fwd_w(wa, seeds[1], axis=-1, history=_rows(history, "fwd_w"), site=(name, "fwd_w"))
        # backward recasts x and W from the high-precision tensors unless one cast serves both GEMMs
        ctx.save_for_backward(x_q if casts.share_x else x, w_q if casts.share_w else weight)
        ctx.casts, ctx.seeds, ctx.has_bias, ctx.history, ctx.name = casts, seeds, bias is not None, history, name
        if not casts.accumulates("fwd"):
            return F.linear(x_q, w_q, bias)  # (..., out)
        y = casts.matmul("fwd", x_q.reshape(-1, x_q.shape[-1]), w_q.t())  # (N, in) @ (in, out) -> (N, out)
        y = y.view(*x.shape[:-1], w_q.shape[0])
        return y if bias is None else y + bias

    @staticmethod
    def backward(ctx, grad_out):
        casts, seeds, history, name = ctx.casts, ctx.seeds, ctx.history, ctx.name
        x_saved, w_saved = ctx.saved_tensors
        out_f, in_f = w_saved.shape
        g = grad_out.reshape(-1, out_f)  # (N, out)
        grad_x = grad_w = grad_b = None
        g_q = None
        if ctx.needs_input_grad[0] or casts.share_g:
            ga, wb = g, w_saved
            if casts.rotates("dgrad"):
                h = _hadamard(casts, seeds[7], g.device)
                ga, wb = hadamard_transform(g, h, -1), hadamard_transform(w_saved, h, 0)
            g_q = casts.dgrad_g(ga, seeds[2], axis=-1, history=_rows(history, "dgrad_g"),
                                site=(name, "dgrad_g"))  # (N, out), blocks along out
            if ctx.needs_input_grad[0]:
                w_dq = w_saved if casts.share_w else casts.dgrad_w(wb, seeds[4], axis=0, history=_rows(history, "dgrad_w"),
                                                                   site=(name, "dgrad_w"))  # (out, in), blocks along out
                grad_x = casts.matmul("dgrad", g_q, w_dq).view(*grad_out.shape[:-1], in_f)  # (N, out) @ (out, in) -> (..., in)
        if ctx.needs_input_grad[1]:
            x2 = x_saved.reshape(-1, in_f)  # (N, in)
            if casts.share_g and casts.share_x:
                g_wq, x_wq = g_q, x2
            else:
                ga, xa = g, x2
                if casts.rotates("wgrad"):
                    h = _hadamard(casts, seeds[8], g.device)
                    ga, xa = hadamard_transform(g, h, 0), hadamard_transform(x2, h, 0)
                g_wq = g_q if casts.share_g else casts.wgrad_g(ga, seeds[5], axis=0, history=_rows(history, "wgrad_g"),
                                                               site=(name, "wgrad_g"))  # (N, out), blocks along tokens
                x_wq = x2 if casts.share_x else casts.wgrad_x(xa, seeds[3], axis=0, history=_rows(history, "wgrad_x"),
                                                              site=(name, "wgrad_x"))  # (N, in)
            grad_w = casts.matmul("wgrad", g_wq.t(), x_wq)  # (out, N) @ (N, in) -> (out, in)
            if casts.weight_grad is not None:
                grad_w = casts.weight_grad(grad_w, site=(name, "weight_grad"))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)  # (out,)
        return grad_x, grad_w, grad_b, None, None, None, None


def _rows(history: tuple[torch.Tensor, torch.Tensor] | None, operand: str):
    """An operand's (amaxes, scale) rows of a layer's delayed-scaling buffers (views: updated in place)."""
    if history is None:
        return None
    i = OPERANDS.index(operand)
    return history[0][i], history[1][i:i + 1]


def _hadamard(casts: LayerCasts, signs_seed: int, device: torch.device) -> torch.Tensor:
    if casts.per_call_signs:
        return hadamard_matrix(casts.hadamard, random_signs(casts.hadamard, signs_seed), device)
    return _fixed_hadamard(casts.hadamard, signs_seed, device)


@functools.lru_cache(maxsize=1024)
def _fixed_hadamard(n: int, signs_seed: int, device: torch.device) -> torch.Tensor:
    """A layer's fixed-sign matrix, built once (it is the same every call)."""
    return hadamard_matrix(n, random_signs(n, signs_seed), device)


class _CastsGEMMs(CountsCalls):
    """What QuantLinear and QuantConv1D share: the casts, the seeds (layer index, run seed, call
    count) and the delayed-scaling buffers, and the call of `_QuantLinearFn` on a weight (out, in)."""

    def _set_casts(self, precision: PrecisionConfig | LayerCasts, index: int, seed: int, name: str,
                   device: torch.device) -> None:
        self.casts = precision.casts if isinstance(precision, PrecisionConfig) else precision
        self.index, self.seed = index, seed
        self.name = name  # the module's name in its model: names its casts for a cast observer (diagnostics)
        self.calls = 0  # forward calls so far; seeds stochastic rounding and per-call Hadamard signs
        if self.casts.delayed_history_len:  # delayed scaling's state, one row per operand (in checkpoints)
            history, scale = DELAYED_STATE
            self.register_buffer(history, torch.zeros(len(OPERANDS), self.casts.delayed_history_len, device=device))
            self.register_buffer(scale, torch.ones(len(OPERANDS), device=device))

    def _cast_gemms(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """y = x . weight^T + bias, weight (out, in), through the cast GEMMs."""
        seeds = _NO_SEEDS
        casts = self.casts
        if casts.needs_seeds:
            per_call = (mix_seed(self.seed, self.index, self.calls, slot) for slot in range(9))
            seeds = tuple(per_call)
        if casts.hadamard and not casts.per_call_signs:  # fixed signs: one draw per layer and GEMM
            seeds = seeds[:6] + tuple(mix_seed(self.seed, self.index, 6 + g) for g in range(len(GEMMS)))
        self.calls += 1
        history = tuple(self._buffers[name] for name in DELAYED_STATE) if DELAYED_STATE[0] in self._buffers else None
        return _QuantLinearFn.apply(x, weight, bias, casts, seeds, history, self.name)


class QuantLinear(_CastsGEMMs, nn.Linear):
    """`nn.Linear` whose GEMMs take fake-quantized operands (see the module docstring)."""

    def __init__(self, linear: nn.Linear, precision: PrecisionConfig | LayerCasts, index: int = 0, seed: int = 0,
                 name: str = ""):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        self.weight, self.bias = linear.weight, linear.bias  # the same Parameters: ties survive
        self._set_casts(precision, index, seed, name, linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._cast_gemms(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.casts.describe()}"


class QuantConv1D(_CastsGEMMs, nn.Module):
    """transformers' `Conv1D` (weight (in, out), y = x . W + b) whose GEMMs take fake-quantized
    operands: QuantLinear's Function on the view W^T (see the module docstring)."""

    def __init__(self, conv1d: nn.Module, precision: PrecisionConfig | LayerCasts, index: int = 0, seed: int = 0,
                 name: str = ""):
        super().__init__()
        self.nx, self.nf = conv1d.weight.shape  # in, out features (Conv1D's names)
        self.weight, self.bias = conv1d.weight, conv1d.bias  # the same Parameters: ties survive
        self._set_casts(precision, index, seed, name, conv1d.weight.device)

    @property
    def in_features(self) -> int:
        return self.nx

    @property
    def out_features(self) -> int:
        return self.nf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._cast_gemms(x, self.weight.t(), self.bias)

    def extra_repr(self) -> str:
        return f"nf={self.nf}, nx={self.nx}, {self.casts.describe()}"


def is_conv1d(module: nn.Module) -> bool:
    """Whether `module` is transformers' Conv1D (by class, without importing transformers)."""
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")


def _gemm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every layer convert_model casts as a GEMM: nn.Linear and transformers' Conv1D."""
    return [(name, m) for name, m in model.named_modules() if type(m) is nn.Linear or is_conv1d(m)]


def convert_model(model: nn.Module, precision: PrecisionConfig | Mapping, seed: int = 0) -> nn.Module:
    """Swap every `nn.Linear` not matching `precision.exclude` for a `QuantLinear` (every transformers
    `Conv1D` for a `QuantConv1D`), and when `precision.attention` casts, every attention core
    (`Attend`) for a `QuantAttend`, or a transformers model's attention for the registered cast path
    (`precisionlab.quant.hf`), in place.

    `precision` is the recipe (`PrecisionConfig.from_cfg` of the run's `precision` node), or a
    precision node or dict of its keys (`{"format": "e4m3", "exclude": ["lm_head"]}`), built here. `seed`
    (the run seed) keys stochastic rounding and Hadamard signs. Layers that `precision.keep` matches
    get the keep format. Returns `model`; a precision without casts leaves it untouched. A model with
    nothing the recipe casts (no linear layer, no attention) is a one-line ValueError.
    """
    if not isinstance(precision, PrecisionConfig):
        precision = PrecisionConfig.from_cfg(precision)
    if precision.is_fp32:
        return model
    linears = _gemm_layers(model)
    _check_castable(model, precision, linears)
    for key, patterns in (("exclude", precision.exclude), ("keep.match", precision.keep.match)):
        for pattern in patterns:  # a typo would silently quantize the layer it meant to keep
            if not any(fnmatch.fnmatchcase(name, pattern) for name, _ in linears):
                log.warning("precision.%s pattern %r matches no linear layer (they are: %s)", key, pattern,
                            ", ".join(name for name, _ in linears[:6]) + (", ..." if len(linears) > 6 else ""))
    # index: the position among the layers not excluded, which seeds their random draws
    for index, (name, linear, casts) in enumerate(_planned(linears, precision)):
        if casts is not None:
            parent_name, _, child = name.rpartition(".")
            swap = QuantConv1D if is_conv1d(linear) else QuantLinear
            setattr(model.get_submodule(parent_name), child, swap(linear, casts, index=index, seed=seed, name=name))
    convert_hf_attention(model, precision.attention, seed=seed)
    return convert_attention(model, precision.attention, seed=seed)


def _check_castable(model: nn.Module, precision: PrecisionConfig, linears: list[tuple[str, nn.Module]]) -> None:
    """ValueError (one line) when the recipe casts something but `model` has nothing it can cast."""
    casts_linears = precision.casts_linears
    has_attention = any(type(m) is Attend for m in model.modules()) or bool(hf_attention_modules(model))
    if (casts_linears and linears) or (not precision.attention.is_fp32 and has_attention):
        return
    if any(isinstance(m, CountsCalls) for m in model.modules()):  # converted already: nothing left, nothing wrong
        return
    what = " and ".join(w for w, on in (("linear layers", casts_linears), ("attention", not precision.attention.is_fp32))
                        if on)
    raise ValueError(f"precision casts {what}, but {type(model).__name__} has nothing it can cast; castable are "
                     "torch.nn.Linear and transformers Conv1D layers, precisionlab's Attend and the attention of "
                     "transformers models (precision.attention); use precision=fp32 for this model")


def _planned(linears: list[tuple[str, nn.Module]], precision: PrecisionConfig):
    """(name, layer, casts) of each (name, nn.Linear or Conv1D) not excluded, in order; casts None: stays fp32."""
    blocks = [_block_of(name) for name, _ in linears]
    n_blocks = 1 + max((b for b in blocks if b is not None), default=-1)
    for (name, linear), block in zip(linears, blocks):
        if not precision.excludes(name):
            yield name, linear, precision.layer_casts(name, block, n_blocks)


def _block_of(name: str) -> int | None:
    match = _BLOCK_NAME.search(name)
    return None if match is None else int(match[1])


def check_hadamard_dims(model: nn.Module, precision: PrecisionConfig, tokens: int) -> None:
    """ValueError naming `precision.hadamard.size` when a GEMM it rotates has a reduction axis
    (in features, out features, or `tokens` = batch x sequence) that is not a multiple of it."""
    for name, module, casts in _planned(_gemm_layers(model), precision):
        if casts is None or not casts.hadamard:
            continue
        in_f, out_f = module.weight.shape[::-1] if type(module) is nn.Linear else module.weight.shape
        axes = {"fwd": ("in features", in_f), "dgrad": ("out features", out_f),
                "wgrad": ("tokens per step (train.batch_size x train.seq_len)", tokens)}
        for gemm in casts.hadamard_gemms:
            what, size = axes[gemm]
            if size % casts.hadamard:
                raise ValueError(f"precision.hadamard.size={casts.hadamard} must divide the {gemm} GEMM's reduction "
                                 f"axis, but {name} has {size} {what}; choose a size that divides it or drop {gemm} "
                                 "from precision.hadamard.gemms")
