"""GEMMs whose partial sums are kept in a reduced format: `Accumulator`, `accumulate_matmul`.

The spec (what `precision.accumulate` emulates). C = A . B with A (M, K), B (K, N). Along K the
products are taken in consecutive chunks of `k` (the last chunk may be shorter). An accumulator
`acc` in format F starts at +0; for each chunk

    acc = round_F(acc + sum of the chunk's products)

where the right-hand side is evaluated in float64 (a product of two fp32 values is exact in
float64, and so are the chunk sums of operands cast to narrow formats of moderate range, such as
FP8 or BF16 values; otherwise float64 differs from exact arithmetic by ~2^-53 relative, far
below F's precision) and `round_F` rounds that float64 once to F (`quantize` with `rounding`,
subnormals kept, overflow to +-Inf as in a hardware accumulator). With promotion every `promote`
elements of K (a multiple of k), after each such interval and at the end of K the accumulator is
added to an fp32 total (an fp32 addition) and reset to +0: DeepSeek-V3's promotion of the tensor
cores' partial sums to fp32 registers on the CUDA cores every N_C = 128 elements (technical
report, arXiv:2412.19437, section 3.3.2, which measured the H800's FP8 GEMM accumulation to keep
about 14 bits: F = e8m13). Without promotion the result is acc. Either way an fp32 tensor.

k = 1 rounds after every product (the strictest model); k >= K rounds once; F = fp32 with k >= K
is an fp32 GEMM whose sum is computed in float64 and rounded once.

The emulated GEMM takes the fake-quantized (dequantized) operands, so with per-tensor or block
scales the accumulator holds scaled values; where scales are powers of two that is the same
rounding as accumulating the codes and scaling afterwards, with arbitrary fp32 scales
(fp8_deepseek) the rounding points shift by the scales' significands.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch

from precisionlab.numerics.blocks import parse_format
from precisionlab.numerics.cast import ROUNDING_MODES, quantize
from precisionlab.numerics.formats import FloatFormat

__all__ = ["Accumulator", "accumulate_matmul", "ACCUMULATE_ROUNDINGS", "parse_accumulator"]

ACCUMULATE_ROUNDINGS = tuple(mode for mode in ROUNDING_MODES if mode != "stochastic")


@dataclass(frozen=True)
class Accumulator:
    """A GEMM accumulator: its format, rounding cadence and fp32 promotion interval."""

    fmt: FloatFormat  # the accumulator's format (no wider than fp32, with Inf)
    k: int = 1  # products added between two roundings of the accumulator
    promote: int = 0  # add the accumulator to an fp32 total every `promote` elements of K; 0: never
    rounding: str = "nearest_even"  # how the accumulator rounds: a deterministic mode of `quantize`

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be an integer >= 1 (products per rounding); got {self.k!r}")
        if isinstance(self.promote, bool) or not isinstance(self.promote, int) or self.promote < 0 \
                or (self.promote and self.promote % self.k):
            raise ValueError(f"promote must be 0 (never) or a positive multiple of k={self.k}; got {self.promote!r}")
        if self.rounding not in ACCUMULATE_ROUNDINGS:
            raise ValueError(f"rounding must be one of {', '.join(ACCUMULATE_ROUNDINGS)}; got {self.rounding!r}")
        if not self.fmt.has_inf:
            raise ValueError(f"format must have Inf, as an accumulator overflows to it (an IEEE-style format such "
                             f"as fp32, bf16, fp16, tf32 or eXmY); {self.fmt} has none")

    def __str__(self) -> str:
        text = f"acc {self.fmt}/k{self.k}"
        return text + (f"/promote{self.promote}" if self.promote else "")


def parse_accumulator(name: str) -> FloatFormat:
    """The accumulator format `name`; ValueError for block formats and formats wider than fp32 (its
    message starts with what is wrong, so a caller can prefix the key)."""
    wide = re.fullmatch(r"e(\d+)m(\d+)(fn|fnuz)?", str(name))
    if str(name) in ("fp64", "float64", "double") or (wide and (int(wide[1]) > 8 or int(wide[2]) > 23)):
        raise ValueError(f"an accumulator can be no wider than fp32 (e8m23), the emulated GEMM's result; "
                         f"got {name!r}")
    fmt = parse_format(name)
    if not isinstance(fmt, FloatFormat):
        raise ValueError(f"an accumulator takes an element format (e.g. e8m13, bf16, fp16), not the block format {name!r}")
    return fmt


def accumulate_matmul(a: torch.Tensor, b: torch.Tensor, acc: Accumulator, backend: str = "auto") -> torch.Tensor:
    """a (M, K) @ b (K, N) with the partial sums per the module's spec; fp32 (M, N).

    backend: "torch" (a blocked loop: one float64 addmm and one `quantize` per chunk), "triton"
    (`precisionlab/kernels/accumulate_triton.py`: CUDA tensors, or CPU under TRITON_INTERPRET=1), or "auto"
    (Triton for CUDA tensors). Both give the same bits wherever the chunk sums are exact in float64."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"accumulate_matmul takes (M, K) and (K, N) matrices; got {tuple(a.shape)} and {tuple(b.shape)}")
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"unknown backend {backend!r}; accepted: auto, torch, triton")
    if backend == "triton" or (backend == "auto" and a.is_cuda):
        if not a.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)")
        from precisionlab.kernels.accumulate_triton import accumulate_triton

        return accumulate_triton(a.detach(), b.detach(), acc)
    a64, b64 = a.detach().double(), b.detach().double()
    K = a.shape[1]
    partial = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float64, device=a.device)  # (M, N), values of F
    total = torch.zeros(partial.shape, dtype=torch.float32, device=a.device) if acc.promote else None  # fp32 (M, N)
    for start in range(0, K, acc.k):
        end = min(start + acc.k, K)
        # acc + the chunk's products, in float64 (addmm: one pass), then one rounding to F
        partial = quantize(torch.addmm(partial, a64[:, start:end], b64[start:end]), acc.fmt,
                           rounding=acc.rounding, saturate=False)
        if acc.promote and (end % acc.promote == 0 or end == K):
            total = total + partial.float()  # an fp32 addition (.float() is exact: F is within fp32)
            partial = torch.zeros_like(partial)
    return partial.float() if total is None else total
