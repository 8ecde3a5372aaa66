"""Triton kernel of a GEMM with limited-precision accumulation (precisionlab.numerics.accumulate).

Each program owns a BLOCK_M x BLOCK_N tile of C and walks K in chunks of K_CHUNK products: it adds
the chunk's products to the accumulator in float64 (one outer product per element of K; a
product of two fp32 values is exact in float64, so a fused multiply-add gives the same bits),
rounds the sum to the accumulator format (`round_f64`, integer arithmetic on the float64 bit
pattern) and, with promotion, adds the accumulator to an fp32 total every PROMOTE elements.
The torch twin is `accumulate_matmul`'s blocked loop (float64 addmm per chunk, `quantize`);
the two agree bit for bit wherever the chunk sums are exact in float64 (tests run the kernel
under TRITON_INTERPRET=1).

Cost: no tensor cores (float64 FMAs and ~25 integer ops per rounding per output element), so
K_CHUNK = 1 is compute-bound at roughly M*N*K*30 operations; it is an emulator's kernel, meant
for studies at the tiny and small presets' sizes, not for 124M-scale training.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .spec import NEAREST_AWAY as _NEAREST_AWAY
from .spec import NEAREST_EVEN as _NEAREST_EVEN
from .spec import ROUNDING_MODES

__all__ = ["accumulate_kernel", "round_f64", "accumulate_triton", "kernel_constexprs", "BLOCK_M", "BLOCK_N"]

BLOCK_M, BLOCK_N = 32, 32
NEAREST_EVEN = tl.constexpr(_NEAREST_EVEN)
NEAREST_AWAY = tl.constexpr(_NEAREST_AWAY)


@triton.jit
def round_f64(
    x,  # float64 tensor: the values to round
    MAN_BITS: tl.constexpr,  # M, mantissa bits of the accumulator format (<= 23)
    EMIN: tl.constexpr,  # unbiased exponent of its smallest normal (>= -126)
    MAX_FINITE: tl.constexpr,  # its largest finite value
    ROUNDING: tl.constexpr,  # 0 nearest_even, 1 nearest_away, 2 toward_zero
):
    """x rounded once to the format: subnormals kept, a finite overflow goes to +-Inf (toward_zero:
    +-MAX_FINITE), Inf and NaN stay, signed zero kept."""
    u = x.to(tl.int64, bitcast=True)
    a = u & 0x7FFFFFFFFFFFFFFF
    biased = a >> 52
    e = tl.maximum(biased, 1) - 1023
    sig = (a & 0xFFFFFFFFFFFFF) | tl.where(biased > 0, 0x10000000000000, 0)
    s = tl.maximum(e, EMIN) - MAN_BITS  # exponent of the format's ulp at x
    sh = tl.minimum(s - (e - 52), 54)  # low bits of sig below that ulp (>= 29: M <= 23)
    n = sig >> sh
    rem = sig - (n << sh)
    half = tl.full(sh.shape, 1, tl.int64) << (sh - 1)
    if ROUNDING == NEAREST_EVEN:
        up = (rem > half) | ((rem == half) & ((n & 1) == 1))
    elif ROUNDING == NEAREST_AWAY:
        up = rem >= half
    else:  # TOWARD_ZERO
        up = rem < 0
    n = n + up.to(tl.int64)
    pow2_s = ((s + 1023) << 52).to(tl.float64, bitcast=True)  # 2^s: s >= -149, a normal float64
    mag = n.to(tl.float64) * pow2_s  # exact: a value of the format (or just past its max)
    if ROUNDING == NEAREST_EVEN or ROUNDING == NEAREST_AWAY:
        mag = tl.where(mag > MAX_FINITE, float("inf"), mag)
    else:
        mag = tl.minimum(mag, MAX_FINITE)
    out = tl.where(u < 0, -mag, mag)
    return tl.where(biased == 2047, x, out)  # Inf and NaN pass


@triton.jit
def accumulate_kernel(
    a_ptr,  # *fp32 (M, K): left operand
    b_ptr,  # *fp32 (K, N): right operand
    c_ptr,  # *fp32 (M, N): result
    M, N, K,  # problem size
    stride_am, stride_ak,  # a's strides, in elements
    stride_bk, stride_bn,  # b's strides
    stride_cm, stride_cn,  # c's strides
    MAN_BITS: tl.constexpr,  # accumulator format: mantissa bits
    EMIN: tl.constexpr,  # accumulator format: unbiased exponent of its smallest normal
    MAX_FINITE: tl.constexpr,  # accumulator format: largest finite value
    ROUNDING: tl.constexpr,  # 0 nearest_even, 1 nearest_away, 2 toward_zero
    K_CHUNK: tl.constexpr,  # products added between two roundings (k)
    PROMOTE: tl.constexpr,  # add the accumulator to an fp32 total every PROMOTE elements of K; 0: never
    BLOCK_M: tl.constexpr,  # rows of C per program
    BLOCK_N: tl.constexpr,  # columns of C per program
):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    a_row = a_ptr + rm.to(tl.int64) * stride_am
    b_col = b_ptr + rn.to(tl.int64) * stride_bn
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float64)
    total = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for start in range(0, K, K_CHUNK):
        end = tl.minimum(start + K_CHUNK, K)
        for kk in range(start, end):
            a = tl.load(a_row + kk * stride_ak, mask=rm < M, other=0.0).to(tl.float64)
            b = tl.load(b_col + kk * stride_bk, mask=rn < N, other=0.0).to(tl.float64)
            acc += a[:, None] * b[None, :]
        acc = round_f64(acc, MAN_BITS, EMIN, MAX_FINITE, ROUNDING)
        if PROMOTE > 0:
            if (end % PROMOTE == 0) | (end == K):
                total += acc.to(tl.float32)  # exact conversion: the format is within fp32
                acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float64)
    if PROMOTE == 0:
        total = acc.to(tl.float32)
    c = c_ptr + rm.to(tl.int64)[:, None] * stride_cm + rn.to(tl.int64)[None, :] * stride_cn
    tl.store(c, total, mask=(rm[:, None] < M) & (rn[None, :] < N))


def accumulate_triton(a: torch.Tensor, b: torch.Tensor, acc) -> torch.Tensor:
    """a (M, K) @ b (K, N), fp32, with the `Accumulator` spec `acc`; a new fp32 (M, N) tensor."""
    a, b = a.float(), b.float()
    M, K = a.shape
    N = b.shape[1]
    c = torch.empty(M, N, dtype=torch.float32, device=a.device)
    if M == 0 or N == 0:
        return c
    grid = (triton.cdiv(M, BLOCK_M), triton.cdiv(N, BLOCK_N))
    accumulate_kernel[grid](
        a, b, c, M, N, K,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
        **kernel_constexprs(acc),
    )
    return c


def kernel_constexprs(acc) -> dict:
    """The kernel's compile-time arguments for an `Accumulator`."""
    return dict(MAN_BITS=acc.fmt.man_bits, EMIN=acc.fmt.emin, MAX_FINITE=acc.fmt.max_finite,
                ROUNDING=ROUNDING_MODES.index(acc.rounding), K_CHUNK=acc.k, PROMOTE=acc.promote,
                BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N)
