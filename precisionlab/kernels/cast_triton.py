"""Triton cast kernel: round fp32 values into any `FloatFormat`, bit-exactly.

One generic kernel; the format and options are `tl.constexpr`, so each
(format, rounding, …) pair compiles to its own specialised binary with all
format branches folded away. Pure integer arithmetic on the fp32 bit pattern,
except one exact multiply by a power of two (no FTZ: tests check the PTX).
The algorithm is documented in `cast_torch.py`, its line-for-line twin.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import spec as _modes
from .spec import CastSpec

__all__ = ["cast_kernel", "round_bits", "cast_triton", "element_constexprs", "kernel_constexprs", "BLOCK_SIZE"]

BLOCK_SIZE = 1024
# Globals read inside @triton.jit must be constexpr.
NEAREST_EVEN = tl.constexpr(_modes.NEAREST_EVEN)
NEAREST_AWAY = tl.constexpr(_modes.NEAREST_AWAY)
STOCHASTIC = tl.constexpr(_modes.STOCHASTIC)


@triton.jit
def round_bits(
    u,  # int32 tensor: fp32 bit patterns to round
    seed,  # Philox key for stochastic rounding; unused otherwise
    rand_index,  # int32/int64 tensor like u: the random-stream index of each element (stochastic only)
    MAN_BITS: tl.constexpr,  # M, mantissa bits the format keeps
    EMIN: tl.constexpr,  # unbiased exponent of the format's smallest normal
    BIAS_PARITY: tl.constexpr,  # bias & 1; with M == 0 the tie goes to the even exponent code
    MAX_BITS: tl.constexpr,  # fp32 bits of +max_finite
    MIN_NORMAL_BITS: tl.constexpr,  # fp32 bits of +min_normal
    OVERFLOW_BITS: tl.constexpr,  # magnitude bits an Inf input becomes
    FINITE_OVERFLOW_BITS: tl.constexpr,  # magnitude bits a finite overflow becomes
    ROUNDING: tl.constexpr,  # 0 nearest_even, 1 nearest_away, 2 toward_zero, 3 stochastic
    FLUSH_SUBNORMALS: tl.constexpr,  # results below min_normal become signed zero
    NO_NEGATIVE_ZERO: tl.constexpr,  # fnuz: a zero result is +0
):
    """The element cast on bit patterns: fp32 bits in, fp32 bits of the rounded value out.

    Shared by `cast_kernel` and the block kernel (`block_triton.py`); the twin is `cast_torch.cast_bits`.
    """
    a = u & 0x7FFFFFFF
    biased_exp = a >> 23
    e = tl.maximum(biased_exp, 1) - 127
    sig = (a & 0x7FFFFF) | tl.where(biased_exp > 0, 0x800000, 0)

    s = tl.maximum(e, EMIN) - MAN_BITS  # exponent of the target ulp
    shift = s - (e - 23)  # low bits of sig below that ulp
    sh = tl.minimum(shift, 25)
    n = sig >> sh
    rem = sig - (n << sh)
    full = tl.full(sh.shape, 1, tl.int32) << sh

    if ROUNDING == NEAREST_EVEN:
        # ties (2*rem == full) go up only from an odd code: one compare does both
        if MAN_BITS > 0:
            odd = n & 1
        else:
            odd = ((n != 0) & (((s + BIAS_PARITY) & 1) != 0)).to(tl.int32)
        up = 2 * rem + odd > full
    elif ROUNDING == NEAREST_AWAY:
        up = 2 * rem >= full  # rem == 0 never passes: full >= 1
    elif ROUNDING == STOCHASTIC:
        frac31 = tl.where(
            shift <= 31,
            rem << tl.maximum(31 - shift, 0),
            rem >> tl.minimum(tl.maximum(shift - 31, 0), 31),
        )
        rand31 = (tl.randint(seed, rand_index) >> 1).to(tl.int32)
        up = rand31 < frac31
    else:  # TOWARD_ZERO
        up = rem < 0
    n = n + up.to(tl.int32)

    pow2_s = tl.where(s >= -126, (s + 127) << 23, 1 << tl.maximum(s + 149, 0))
    mag = (n.to(tl.float32) * pow2_s.to(tl.float32, bitcast=True)).to(tl.int32, bitcast=True)

    if FLUSH_SUBNORMALS:
        mag = tl.where(mag < MIN_NORMAL_BITS, 0, mag)
    mag = tl.where(mag > MAX_BITS, FINITE_OVERFLOW_BITS, mag)
    mag = tl.where(a == 0x7F800000, OVERFLOW_BITS, mag)
    mag = tl.where(a > 0x7F800000, a, mag)
    sign = u & -0x80000000
    if NO_NEGATIVE_ZERO:
        sign = tl.where(mag == 0, 0, sign)
    return mag | sign


@triton.jit
def cast_kernel(
    x_ptr,  # *fp32: input, contiguous
    y_ptr,  # *fp32: output, contiguous, same number of elements (may equal x_ptr)
    n_elements,  # number of elements to cast
    seed,  # Philox key for stochastic rounding, in [0, 2^63); unused otherwise
    offset,  # random-stream index of element 0 (element i draws philox(seed, offset + i))
    MAN_BITS: tl.constexpr,  # M, mantissa bits the format keeps
    EMIN: tl.constexpr,  # unbiased exponent of the format's smallest normal
    BIAS_PARITY: tl.constexpr,  # bias & 1; with M == 0 the tie goes to the even exponent code
    MAX_BITS: tl.constexpr,  # fp32 bits of +max_finite
    MIN_NORMAL_BITS: tl.constexpr,  # fp32 bits of +min_normal
    OVERFLOW_BITS: tl.constexpr,  # magnitude bits an Inf input becomes
    FINITE_OVERFLOW_BITS: tl.constexpr,  # magnitude bits a finite overflow becomes
    ROUNDING: tl.constexpr,  # 0 nearest_even, 1 nearest_away, 2 toward_zero, 3 stochastic
    FLUSH_SUBNORMALS: tl.constexpr,  # results below min_normal become signed zero
    NO_NEGATIVE_ZERO: tl.constexpr,  # fnuz: a zero result is +0
    BLOCK_SIZE: tl.constexpr,  # elements per program
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offs < n_elements
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    q = round_bits(
        x.to(tl.int32, bitcast=True), seed, offs + offset,
        MAN_BITS, EMIN, BIAS_PARITY, MAX_BITS, MIN_NORMAL_BITS, OVERFLOW_BITS, FINITE_OVERFLOW_BITS,
        ROUNDING, FLUSH_SUBNORMALS, NO_NEGATIVE_ZERO,
    )
    tl.store(y_ptr + offs, q.to(tl.float32, bitcast=True), mask=mask)


def element_constexprs(spec: CastSpec) -> dict:
    """`round_bits`' compile-time arguments for an element format (shared by the block kernel)."""
    return dict(
        MAN_BITS=spec.man_bits,
        EMIN=spec.emin,
        BIAS_PARITY=spec.bias_parity,
        MAX_BITS=spec.max_bits,
        MIN_NORMAL_BITS=spec.min_normal_bits,
        OVERFLOW_BITS=spec.overflow_bits,
        FINITE_OVERFLOW_BITS=spec.finite_overflow_bits,
        ROUNDING=spec.rounding,
        FLUSH_SUBNORMALS=spec.flush_subnormals,
        NO_NEGATIVE_ZERO=spec.no_negative_zero,
    )


def kernel_constexprs(spec: CastSpec) -> dict:
    """The kernel's compile-time arguments for a cast."""
    return dict(**element_constexprs(spec), BLOCK_SIZE=BLOCK_SIZE)


def cast_triton(x: torch.Tensor, spec: CastSpec, seed: int = 0, offset: int = 0) -> torch.Tensor:
    """Launch `cast_kernel` on a contiguous fp32 tensor (CUDA, or CPU under TRITON_INTERPRET=1)."""
    assert x.dtype == torch.float32, "the Triton kernel casts fp32 tensors"
    x = x.contiguous()
    y = torch.empty_like(x)
    n = x.numel()
    if n:
        grid = (triton.cdiv(n, BLOCK_SIZE),)
        cast_kernel[grid](x, y, n, seed, offset, **kernel_constexprs(spec))
    return y
