"""AdamW with its moments stored in a format: `build_optimizer`, `MomentFormats`.

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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from precisionlab.numerics.blocks import BlockFormat, parse_format
from precisionlab.numerics.cast import quantize, quantize_scaled
from precisionlab.numerics.formats import FloatFormat

__all__ = ["MomentFormats", "build_optimizer", "store_moments"]

_FP32 = FloatFormat.parse("fp32")


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


def build_optimizer(model: torch.nn.Module, optim: Any) -> torch.optim.AdamW:
    """AdamW over `model`'s parameters, weight decay on matrices only (not biases or norms)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
    )


@torch.no_grad()
def store_moments(optimizer: torch.optim.Optimizer, formats: MomentFormats) -> None:
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
