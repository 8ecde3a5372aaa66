"""Simulated low-precision GEMMs: a module swap of every `nn.Linear`.

`convert_model(model, precision)` replaces each `nn.Linear` (except those
matching `precision.exclude`) by a `QuantLinear` whose autograd Function
fake-quantizes the GEMM *inputs* with `precisionlab.quantize` and multiplies
in fp32 (fp32 accumulation):

  forward   y      = x_q @ w_q^T + b        x_q = cast_x(x), w_q = cast_w(w)
  backward  grad_x = g_q @ w_q              g_q = cast_grad(dL/dy), cast once
            grad_w = g_q^T @ x_q            x_q, w_q saved from forward
            grad_b = sum of dL/dy            bias and its gradient stay fp32

Each role (x, w, grad) has its own format; a role in fp32 skips the cast, and
a model whose three roles are fp32 is returned untouched.

Scaling `tensor` is per-tensor current scaling: before the cast a tensor is
multiplied by s = 2^floor(log2(max_finite / amax)) and divided by s after it.
The scale is a power of two (as in MX and Transformer Engine's
power-of-two option), so scaling moves values into the format's range but
never adds a rounding of its own: q(x*s)/s is exact apart from q. With
`pow2_scale: false` it is FP8 recipes' s = max_finite / amax instead.

Stochastic rounding is reproducible: each cast gets an explicit seed mixed
from the run seed, the layer's index, the layer's call count and the role;
the call count is part of the module's state_dict, so a resumed run draws
the same random bits as an uninterrupted one.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from precisionlab.numerics.cast import quantize
from precisionlab.numerics.formats import FloatFormat

log = logging.getLogger(__name__)

__all__ = ["RoleCast", "PrecisionConfig", "QuantLinear", "convert_model", "ROLES", "SCALINGS"]

ROLES = ("x", "w", "grad")
SCALINGS = ("none", "tensor")
_FP32 = FloatFormat.parse("fp32")
_MASK63 = (1 << 63) - 1


@dataclass(frozen=True)
class RoleCast:
    """How one GEMM input is cast; `fmt=None` means fp32 (no cast)."""

    fmt: FloatFormat | None
    rounding: str = "nearest_even"
    saturate: bool = True
    subnormals: bool = True
    scaling: str = "none"
    pow2_scale: bool = True

    def __call__(self, t: torch.Tensor, seed: int) -> torch.Tensor:
        if self.fmt is None:
            return t
        kw = dict(rounding=self.rounding, saturate=self.saturate, subnormals=self.subnormals, seed=seed)
        if self.scaling == "none":
            return quantize(t, self.fmt, **kw)
        scale = self._scale(t)
        return quantize(t * scale, self.fmt, **kw) / scale

    def _scale(self, t: torch.Tensor) -> torch.Tensor:
        """Per-tensor scale (0-dim, on t's device, no host sync); 1 when amax is 0, Inf or NaN."""
        amax = t.detach().abs().amax().float()
        usable = torch.isfinite(amax) & (amax > 0)
        amax = torch.where(usable, amax, torch.ones_like(amax))
        if self.pow2_scale:
            # exact floor(log2(max_finite / amax)) from the binary exponents: a = m 2^e, max = M 2^E, m, M in [0.5, 1)
            m, e = torch.frexp(amax)
            big_m, big_e = math.frexp(self.fmt.max_finite)
            k = (big_e - e - (m > big_m).to(e.dtype)).clamp(-126, 126)
            scale = torch.ldexp(torch.ones_like(amax), k)
        else:
            scale = (self.fmt.max_finite / amax).clamp(2.0**-126, 2.0**126)
        return torch.where(usable, scale, torch.ones_like(scale)).to(t.dtype)


@dataclass(frozen=True)
class PrecisionConfig:
    """Casts of the three GEMM roles, and which Linear layers keep full precision."""

    x: RoleCast
    w: RoleCast
    grad: RoleCast
    exclude: tuple[str, ...] = ()  # fnmatch patterns on module names, e.g. "lm_head"

    @property
    def is_fp32(self) -> bool:
        return self.x.fmt is None and self.w.fmt is None and self.grad.fmt is None

    @classmethod
    def from_cfg(cls, cfg: Any) -> PrecisionConfig:
        """Build from a `precision` config node (DictConfig or dict); a format name that does not
        parse is a ValueError naming its key. The other values are checked by the config schema
        (precisionlab.config)."""
        if isinstance(cfg, PrecisionConfig):
            return cfg
        cfg = _plain(cfg)
        if cfg.get("format") is not None:
            _parse("format", cfg["format"])  # report the key the user typed, not an interpolated role
        options = dict(
            rounding=cfg.get("rounding", "nearest_even"),
            saturate=bool(cfg.get("saturate", True)),
            subnormals=bool(cfg.get("subnormals", True)),
            scaling=cfg.get("scaling", "none"),
            pow2_scale=bool(cfg.get("pow2_scale", True)),
        )
        roles = {r: RoleCast(_parse(r, cfg.get(r, cfg.get("format", "fp32"))), **options) for r in ROLES}
        exclude = cfg.get("exclude") or ()
        if isinstance(exclude, str):
            exclude = (exclude,)
        return cls(**roles, exclude=tuple(exclude))


def _plain(cfg: Any) -> dict:
    if isinstance(cfg, dict):
        return dict(cfg)
    from omegaconf import OmegaConf  # only when handed a DictConfig

    return OmegaConf.to_container(cfg, resolve=True)


def _parse(role: str, name: Any) -> FloatFormat | None:
    try:
        fmt = FloatFormat.parse(name)
    except ValueError as err:
        raise ValueError(f"precision.{role}: {err}") from None
    return None if fmt == _FP32 else fmt


def _mix_seed(*parts: int) -> int:
    """SplitMix64-style hash of integers into a 63-bit Philox key."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return h & _MASK63


class _QuantLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, precision: PrecisionConfig, seeds: tuple[int, int, int]):
        x_q, w_q = precision.x(x, seeds[0]), precision.w(weight, seeds[1])  # (..., in), (out, in)
        ctx.save_for_backward(x_q, w_q)
        ctx.cast_grad, ctx.grad_seed, ctx.has_bias = precision.grad, seeds[2], bias is not None
        return F.linear(x_q, w_q, bias)  # (..., out)

    @staticmethod
    def backward(ctx, grad_out):
        x_q, w_q = ctx.saved_tensors
        g_q = ctx.cast_grad(grad_out, ctx.grad_seed).reshape(-1, w_q.shape[0])  # (N, out), cast once
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (g_q @ w_q).view(x_q.shape)  # (N, out) @ (out, in) -> (..., in)
        if ctx.needs_input_grad[1]:
            grad_w = g_q.t() @ x_q.reshape(-1, x_q.shape[-1])  # (out, N) @ (N, in) -> (out, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.reshape(-1, w_q.shape[0]).sum(0)  # (out,)
        return grad_x, grad_w, grad_b, None, None


class QuantLinear(nn.Linear):
    """`nn.Linear` whose GEMMs take fake-quantized inputs (see the module docstring)."""

    def __init__(self, linear: nn.Linear, precision: PrecisionConfig, index: int = 0, seed: int = 0):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        self.weight, self.bias = linear.weight, linear.bias  # the same Parameters: ties survive
        self.precision, self.index, self.seed = precision, index, seed
        self.calls = 0  # forward calls so far; seeds stochastic rounding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seeds = (0, 0, 0)
        if self.precision.x.rounding == "stochastic":
            seeds = tuple(_mix_seed(self.seed, self.index, self.calls, role) for role in range(3))
        self.calls += 1
        return _QuantLinearFn.apply(x, self.weight, self.bias, self.precision, seeds)

    def get_extra_state(self) -> dict:
        return {"calls": self.calls}

    def set_extra_state(self, state: dict) -> None:
        self.calls = int(state["calls"])

    def extra_repr(self) -> str:
        fmts = ", ".join(f"{r}={getattr(self.precision, r).fmt or 'fp32'}" for r in ROLES)
        return f"{super().extra_repr()}, {fmts}, scaling={self.precision.x.scaling}"


def convert_model(model: nn.Module, precision: Any, seed: int = 0) -> nn.Module:
    """Swap every `nn.Linear` not matching `precision.exclude` for a `QuantLinear`, in place.

    `precision` is a `PrecisionConfig` or a `precision` config node. `seed`
    (the run seed) keys stochastic rounding. Returns `model`; a precision
    whose three roles are fp32 leaves it untouched.
    """
    precision = PrecisionConfig.from_cfg(precision)
    if precision.is_fp32:
        return model
    linears = [(name, module) for name, module in model.named_modules() if type(module) is nn.Linear]
    for pattern in precision.exclude:  # a typo would silently quantize the layer it meant to keep in fp32
        if not any(fnmatch.fnmatchcase(name, pattern) for name, _ in linears):
            log.warning("precision.exclude pattern %r matches no linear layer (they are: %s)", pattern,
                        ", ".join(name for name, _ in linears[:6]) + (", ..." if len(linears) > 6 else ""))
    targets = [(name, module) for name, module in linears
               if not any(fnmatch.fnmatchcase(name, pat) for pat in precision.exclude)]
    for index, (name, linear) in enumerate(targets):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, QuantLinear(linear, precision, index=index, seed=seed))
    return model
