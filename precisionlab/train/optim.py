"""AdamW with its moments and weights stored in formats: `build_optimizer`, `MomentFormats`, `MasterFormat`.

`optim.exp_avg_format` / `optim.exp_avg_sq_format` (both default to `optim.state_format`, fp32)
store AdamW's first / second moment in a format, as MS-AMP's O2 optimizer (FP8 first moment,
FP16 second moment) and COAT do. Each step computes the moments and the update in fp32 from the
stored moments (torch's AdamW), then the stored moments are cast in place:

  element formats  per-tensor current scaling with a power-of-two scale, as MS-AMP's
                   `tensor_scale=True` (`quantize_scaled`): the stored value is code / 2^k,
                   so a moment far below the format's range does not flush to zero
  block formats    `quantize` along the last axis (their own block scales)

The stored moments are exactly representable after every step (format value times the tensor's
scale), and they are the optimizer's state_dict, so resuming is bit for bit.

`optim.master_format` (default fp32: an fp32 master copy, as always) stores the parameters themselves
in an element format, bf16 for pure-bf16 training: `round_master` rounds every parameter after each
`optimizer.step()`, and the initial weights (the same way) before step 1. The parameters stay fp32 tensors holding
format values, so torch's AdamW computes p_old + update in fp32 in place (exactly what an fp32 master
copy would hold after the step, since p_old is the stored format value) and `round_master` rounds that
sum into the format: nearest even (an update below half an ulp of its weight is lost: training stalls)
or stochastically (`optim.master_rounding=stochastic`: up with probability the discarded fraction,
so the stored weight is unbiased). The stochastic draws are keyed by the run's seed, the step and the
parameter's index (`quant.operands._mix_seed`), so a resumed run draws the same bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from precisionlab.numerics.blocks import BlockFormat, parse_format
from precisionlab.numerics.cast import quantize, quantize_scaled
from precisionlab.numerics.formats import FloatFormat
from precisionlab.quant.operands import _mix_seed

__all__ = ["MomentFormats", "MasterFormat", "MASTER_ROUNDINGS", "build_optimizer", "round_moments", "round_master"]

_FP32 = FloatFormat.parse("fp32")
MASTER_ROUNDINGS = ("nearest_even", "stochastic")
_MASTER_TAG = 0x6D6173746572  # "master": keeps these seeds apart from QuantLinear's (seed, layer, ...) draws


@dataclass(frozen=True)
class MomentFormats:
    """The formats AdamW's moments are stored in; None: fp32 (no cast)."""

    exp_avg: FloatFormat | BlockFormat | None = None
    exp_avg_sq: FloatFormat | BlockFormat | None = None

    @classmethod
    def from_cfg(cls, optim: Any) -> MomentFormats:
        """From an `optim` config node; ValueError naming the key for a bad format name."""
        formats = {}
        for key in ("exp_avg", "exp_avg_sq"):
            name = optim.get(f"{key}_format", optim.get("state_format", "fp32"))
            try:
                fmt = parse_format(name)
            except ValueError as err:
                raise ValueError(f"optim.{key}_format: {err}") from None
            if isinstance(fmt, BlockFormat) and fmt.block_cols > 1:
                raise ValueError(f"optim.{key}_format takes an element format or 1-D blocks (biases and norms have "
                                 f"1-D moments); got {name!r}")
            formats[key] = None if fmt == _FP32 else fmt
        return cls(**formats)

    @property
    def is_fp32(self) -> bool:
        return self.exp_avg is None and self.exp_avg_sq is None


@dataclass(frozen=True)
class MasterFormat:
    """The element format the parameters are stored in (no fp32 master copy) and how each step's
    fp32 result rounds into it; format None: fp32 master weights (nothing to do)."""

    format: FloatFormat | None = None
    rounding: str = "nearest_even"

    @classmethod
    def from_cfg(cls, optim: Any) -> MasterFormat:
        """From an `optim` config node (its rounding checked by the schema); ValueError naming the key for
        a bad format name."""
        name = optim.get("master_format", "fp32")
        try:
            fmt = parse_format(name)
        except ValueError as err:
            raise ValueError(f"optim.master_format: {err}") from None
        if isinstance(fmt, BlockFormat):
            raise ValueError(f"optim.master_format takes an element format (bf16, fp16, e5m2, ...), not a block "
                             f"format; got {name!r}")
        return cls(None if fmt == _FP32 else fmt, optim.get("master_rounding", "nearest_even"))


def build_optimizer(model: torch.nn.Module, optim: Any) -> torch.optim.AdamW:
    """AdamW over `model`'s parameters, weight decay on matrices only (not biases or norms)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
    )


@torch.no_grad()
def round_moments(optimizer: torch.optim.Optimizer, formats: MomentFormats) -> None:
    """Cast every parameter's moments to their formats, in place (call after `optimizer.step()`);
    nothing to do when both stay fp32."""
    if formats.is_fp32:
        return
    for state in optimizer.state.values():
        for key in ("exp_avg", "exp_avg_sq"):
            fmt = getattr(formats, key)
            if fmt is not None and key in state:
                moment = state[key]
                cast = quantize(moment, fmt) if isinstance(fmt, BlockFormat) else quantize_scaled(moment, fmt)
                moment.copy_(cast)


@torch.no_grad()
def round_master(model: torch.nn.Module, master: MasterFormat, seed: int, step: int) -> None:
    """Round every parameter of `model` to `master.format` in place: after `optimizer.step()` of
    1-based `step`, and with step 0 on the initial weights. A stochastic draw is keyed by (seed, step,
    parameter index), so it is reproducible and differs from step to step; nothing to do for fp32."""
    if master.format is None:
        return
    stochastic = master.rounding == "stochastic"
    for index, p in enumerate(model.parameters()):  # (any shape), fp32 holding format values
        key = _mix_seed(seed, _MASTER_TAG, step, index) if stochastic else None
        p.copy_(quantize(p, master.format, rounding=master.rounding, seed=key))
