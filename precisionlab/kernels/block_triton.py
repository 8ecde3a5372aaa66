"""Triton block-cast kernel: amax, scale and element cast of every block in one pass, bit-exactly.

The input is a contiguous fp32 matrix x2d (rows, K) with the block axis last
(`quantize` moves it there). A block is B consecutive elements of a row times C
consecutive rows (C = 1: 1-D blocks); the last blocks along either axis may be
partial, masked loads read 0 there, which leaves amax unchanged.

One program casts a tile of whole blocks held as an (NB, CHUNK) register tile:
row i of the tile is one block, column j its j-th element (row-major inside the
B x C block), so the block amax is one `tl.max(axis=1)` and the scale
broadcasts along axis 1. Blocks larger than MAX_TILE elements (B x C up to
65536) take one program each and are walked in CHUNK_SIZE-element chunks twice:
once for amax, once for the cast (the re-read is served by L2).

The arithmetic is precisionlab/kernels/block_torch.py's (the README's "Block-scaled formats"), all in fp32:
  amax    max |x| over the block, as an integer max of the magnitude bits
          (equal to the float max for finite values, and > 0x7F800000 for NaN,
          so a NaN or Inf block is recognised without NaN-propagation rules);
  E8M0    k = floor(log2 amax) - emax_elem (+1 for rceil when amax's mantissa
          exceeds max_elem's), clamped to [-127, 127], 0 for amax 0;
          q = elem(x * 2^-k), out = q * 2^k;
  float   s = scale(amax / max_elem); q = elem(x / s) (x * 0 when s == 0); out = q * s;
  tensor  (NVFP4, two-level) S = 1 if amax_t == 0 else min(SM*EM / amax_t, FLT_MAX);
          s_b = scale(min(amax * (S * (1/EM)), SM)); enc = 1 / (s_b * (1/S));
          q = elem(x * enc) (x * 0 when s_b == 0); out = (q * s_b) / S;
  NaN/Inf anywhere in a block -> the whole block is NaN (0x7FC00000).
Divisions are `tl.math.div_rn` (IEEE round-to-nearest; Triton's `/` is not
correctly rounded on NVIDIA). Multiplications are plain fp32 (no FTZ: the
tests check the PTX).

Two-level scaling needs amax_t, the largest amax of the finite blocks (a NaN/Inf
block does not count, nor do its finite elements), before any block can be
cast. The wrapper runs the same kernel twice: first with AMAX_PASS (each
program folds its finite blocks' amax into one int32 cell with `tl.atomic_max`
on the magnitude bits, so the result is order-independent and exact), then the
cast, which reads amax_t from that cell on the device: no host sync, 1.5 reads
of x in all. Formats without a tensor scale are one launch, one read.

Stochastic rounding: element (r, k) draws `tl.randint(seed, r * K + k)` (its
flat index in x2d), the same 31-bit comparison as the element cast; the torch
twin draws the same Philox stream.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .cast_triton import element_constexprs, round_bits
from .spec import SCALE_E8M0 as _SCALE_E8M0
from .spec import BlockSpec
from .spec import RULE_RCEIL as _RULE_RCEIL

__all__ = ["block_cast_kernel", "block_cast_triton", "block_kernel_constexprs", "tile_config", "MAX_TILE", "CHUNK_SIZE"]

MAX_TILE = 2048  # elements per program (whole blocks)
CHUNK_SIZE = 1024  # elements per step through a block larger than MAX_TILE (2048 spills on sm_80 around div.rn)
NUM_WARPS = 8
# Globals read inside @triton.jit must be constexpr.
SCALE_E8M0 = tl.constexpr(_SCALE_E8M0)
RULE_RCEIL = tl.constexpr(_RULE_RCEIL)
FP32_INF_BITS = tl.constexpr(0x7F800000)
FP32_NAN_BITS = tl.constexpr(0x7FC00000)
FP32_MAX_BITS = tl.constexpr(0x7F7FFFFF)
TWO_POW_64_BITS = tl.constexpr((64 + 127) << 23)


@triton.jit
def _f32(bits):
    """The fp32 whose bit pattern is the (constexpr) integer `bits`."""
    return tl.full((), bits, tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def _pow2(k):
    """2^k as fp32, exactly, for int32 k in [-149, 127] (2^-127 is the subnormal 0x00400000)."""
    return tl.where(k >= -126, (k + 127) << 23, 1 << tl.maximum(k + 149, 0)).to(tl.float32, bitcast=True)


@triton.jit
def _tile_offsets(
    pid_r,  # int64: this program's tile index along the rows
    pid_c,  # int64: this program's tile index along K
    chunk,  # which CHUNK-element piece of each block (0 unless the block is chunked)
    rows,  # rows of x2d
    K,  # columns of x2d (its row stride)
    B: tl.constexpr,  # elements per block along K
    C: tl.constexpr,  # rows per block
    CB: tl.constexpr,  # blocks per tile along K
    NB: tl.constexpr,  # blocks per tile (NB // CB along the rows)
    CHUNK: tl.constexpr,  # elements of each block in the tile
):
    """(offsets, mask) of the (NB, CHUNK) tile: row i is block i, column j its element chunk*CHUNK + j."""
    i = tl.arange(0, NB)[:, None]
    t = chunk * CHUNK + tl.arange(0, CHUNK)[None, :]  # element index inside the B x C block, row-major
    row = (pid_r * (NB // CB) + i // CB) * C + t // B
    col = (pid_c * CB + i % CB) * B + t % B
    return row * K + col, (row < rows) & (col < K)


@triton.jit
def _abs_bits(x):
    return x.to(tl.int32, bitcast=True) & 0x7FFFFFFF


@triton.jit
def block_cast_kernel(
    x_ptr,  # *fp32: input x2d (rows, K), contiguous
    y_ptr,  # *fp32: output, same shape (unused in the AMAX_PASS)
    amax_ptr,  # *int32: one cell, the fp32 bits of amax_t (tensor scale only; the AMAX_PASS raises it from 0)
    rows,  # rows of x2d
    K,  # columns of x2d: the block axis
    n_col_tiles,  # tiles along K (program p casts tile (p // n_col_tiles, p % n_col_tiles))
    seed,  # Philox key for stochastic rounding, in [0, 2^63); unused otherwise
    # -- the element cast (BlockSpec.elem; see cast_triton.round_bits) --
    MAN_BITS: tl.constexpr,  # M, mantissa bits the element format keeps
    EMIN: tl.constexpr,  # unbiased exponent of the element format's smallest normal
    BIAS_PARITY: tl.constexpr,  # bias & 1; with M == 0 the tie goes to the even exponent code
    MAX_BITS: tl.constexpr,  # fp32 bits of the element's +max_finite (also max_elem of the scale rules)
    MIN_NORMAL_BITS: tl.constexpr,  # fp32 bits of the element's +min_normal
    OVERFLOW_BITS: tl.constexpr,  # magnitude bits an Inf element becomes (never reached: Inf blocks are NaN)
    FINITE_OVERFLOW_BITS: tl.constexpr,  # magnitude bits a finite element overflow becomes
    ROUNDING: tl.constexpr,  # element rounding: 0 nearest_even, 1 nearest_away, 2 toward_zero, 3 stochastic
    FLUSH_SUBNORMALS: tl.constexpr,  # element results below min_normal become signed zero
    NO_NEGATIVE_ZERO: tl.constexpr,  # fnuz element: a zero result is +0
    # -- the block scale --
    ELEM_EMAX: tl.constexpr,  # floor(log2 max_elem): E8M0 rules' exponent offset
    RULE: tl.constexpr,  # 0 floor, 1 rceil (E8M0), 2 amax (float scale)
    SCALE_KIND: tl.constexpr,  # 0 E8M0 (power of two, exponent in [-127, 127]), 1 a float format
    SCALE_MAN_BITS: tl.constexpr,  # float scale: mantissa bits
    SCALE_EMIN: tl.constexpr,  # float scale: unbiased exponent of its smallest normal
    SCALE_BIAS_PARITY: tl.constexpr,  # float scale: bias & 1
    SCALE_MAX_BITS: tl.constexpr,  # float scale: fp32 bits of +max_finite (SM of the tensor-scale formula)
    SCALE_MIN_NORMAL_BITS: tl.constexpr,  # float scale: fp32 bits of +min_normal
    SCALE_OVERFLOW_BITS: tl.constexpr,  # float scale: what overflow becomes (saturating: SCALE_MAX_BITS)
    SCALE_FLUSH_SUBNORMALS: tl.constexpr,  # float scale: flushes subnormal scales (never, as built)
    SCALE_NO_NEGATIVE_ZERO: tl.constexpr,  # float scale: fnuz
    TENSOR_SCALE: tl.constexpr,  # two-level scaling with amax_t read from amax_ptr (NVFP4)
    AMAX_PASS: tl.constexpr,  # True: only fold the finite blocks' amax into *amax_ptr; False: cast
    # -- tiling (tile_config) --
    B: tl.constexpr,  # elements per block along K (power of two)
    C: tl.constexpr,  # rows per block (power of two; 1 = 1-D blocks)
    CB: tl.constexpr,  # blocks per tile along K
    NB: tl.constexpr,  # blocks per tile (NB // CB along the rows); 1 when chunked
    CHUNK: tl.constexpr,  # elements of each block loaded at once: B * C, or CHUNK_SIZE above MAX_TILE
    NCHUNK: tl.constexpr,  # B * C // CHUNK: 1 = one pass over registers, > 1 = two sweeps over the block
):
    pid = tl.program_id(0).to(tl.int64)
    pid_r = pid // n_col_tiles
    pid_c = pid % n_col_tiles
    one = _f32(0x3F800000)

    # -- two-level scaling: S and 1/S from amax_t, first (fewer live values across the divisions) --
    tensor_s = one
    inv_tensor_s = one
    if TENSOR_SCALE:
        if not AMAX_PASS:
            amax_t = tl.load(amax_ptr).to(tl.float32, bitcast=True)
            big = tl.math.div_rn(_f32(SCALE_MAX_BITS) * _f32(MAX_BITS), amax_t)  # fp32(SM * EM) / amax_t
            tensor_s = tl.where(amax_t == 0, one, tl.minimum(big, _f32(FP32_MAX_BITS)))
            inv_tensor_s = tl.math.div_rn(one, tensor_s)

    # -- amax of each block of the tile, as magnitude bits (NaN > Inf > every finite value) --
    if NCHUNK == 1:
        offs, mask = _tile_offsets(pid_r, pid_c, 0, rows, K, B, C, CB, NB, CHUNK)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        amax = tl.max(_abs_bits(x), axis=1)
    else:
        amax = tl.zeros((NB,), tl.int32)
        for chunk in range(NCHUNK):
            offs, mask = _tile_offsets(pid_r, pid_c, chunk, rows, K, B, C, CB, NB, CHUNK)
            x = tl.load(x_ptr + offs, mask=mask, other=0.0)
            amax = tl.maximum(amax, tl.max(_abs_bits(x), axis=1))
    finite = amax < FP32_INF_BITS

    if AMAX_PASS:
        tl.atomic_max(amax_ptr, tl.max(tl.where(finite, amax, 0), axis=0))
    else:
        # -- the block scale s (applied as q * s) and the element multiplier or divisor --
        amax_f = amax.to(tl.float32, bitcast=True)
        if SCALE_KIND == SCALE_E8M0:
            # floor(log2 amax) from the exponent bits (subnormal amax normalised by an exact * 2^64)
            sub = amax < 0x00800000
            norm = tl.where(sub, (amax_f * _f32(TWO_POW_64_BITS)).to(tl.int32, bitcast=True), amax)
            k = (norm >> 23) - 127 - tl.where(sub, 64, 0) - ELEM_EMAX
            if RULE == RULE_RCEIL:  # ceil(log2(amax / max_elem)): one more when amax's mantissa is larger
                k = k + ((norm & 0x7FFFFF) > (MAX_BITS & 0x7FFFFF)).to(tl.int32)
            k = tl.where(amax == 0, 0, tl.minimum(tl.maximum(k, -127), 127))
            s = _pow2(k)
            mult = _pow2(-k)  # exact 1 / s
        else:
            if TENSOR_SCALE:
                inv_em = tl.math.div_rn(one, _f32(MAX_BITS))  # fp32(1 / EM)
                unscaled = tl.minimum(amax_f * (tensor_s * inv_em), _f32(SCALE_MAX_BITS))
            else:
                unscaled = tl.math.div_rn(amax_f, _f32(MAX_BITS))
            s = round_bits(
                unscaled.to(tl.int32, bitcast=True), seed, amax,
                SCALE_MAN_BITS, SCALE_EMIN, SCALE_BIAS_PARITY, SCALE_MAX_BITS, SCALE_MIN_NORMAL_BITS,
                SCALE_OVERFLOW_BITS, SCALE_OVERFLOW_BITS, 0, SCALE_FLUSH_SUBNORMALS, SCALE_NO_NEGATIVE_ZERO,
            ).to(tl.float32, bitcast=True)
            if TENSOR_SCALE:
                mult = tl.math.div_rn(one, s * inv_tensor_s)  # enc = 1 / (s_b * (1 / S))
            else:
                mult = s  # unused: the elements are divided by s
        s2 = s[:, None]
        mult2 = mult[:, None]
        bad = (~finite)[:, None]

        # -- the element cast of each chunk --
        if NCHUNK == 1:
            out = _cast_elements(
                x, s2, mult2, bad, tensor_s, seed, offs,
                MAN_BITS, EMIN, BIAS_PARITY, MAX_BITS, MIN_NORMAL_BITS, OVERFLOW_BITS, FINITE_OVERFLOW_BITS,
                ROUNDING, FLUSH_SUBNORMALS, NO_NEGATIVE_ZERO, SCALE_KIND, TENSOR_SCALE,
            )
            tl.store(y_ptr + offs, out, mask=mask)
        else:
            for chunk in range(NCHUNK):
                offs, mask = _tile_offsets(pid_r, pid_c, chunk, rows, K, B, C, CB, NB, CHUNK)
                x = tl.load(x_ptr + offs, mask=mask, other=0.0)
                out = _cast_elements(
                    x, s2, mult2, bad, tensor_s, seed, offs,
                    MAN_BITS, EMIN, BIAS_PARITY, MAX_BITS, MIN_NORMAL_BITS, OVERFLOW_BITS, FINITE_OVERFLOW_BITS,
                    ROUNDING, FLUSH_SUBNORMALS, NO_NEGATIVE_ZERO, SCALE_KIND, TENSOR_SCALE,
                )
                tl.store(y_ptr + offs, out, mask=mask)


@triton.jit
def _cast_elements(
    x,  # (NB, CHUNK) fp32 tile
    s,  # (NB, 1) fp32 block scale (the decode multiplier)
    mult,  # (NB, 1) fp32: E8M0 1/s; tensor scale enc; float scale unused (x / s)
    bad,  # (NB, 1) bool: the block holds a NaN or Inf
    tensor_s,  # fp32 scalar S (tensor scale only)
    seed,  # Philox key (stochastic rounding)
    index,  # (NB, CHUNK) int64: flat index r * K + k of each element (its random-stream index)
    MAN_BITS: tl.constexpr,  # element format, as in round_bits ...
    EMIN: tl.constexpr,
    BIAS_PARITY: tl.constexpr,
    MAX_BITS: tl.constexpr,
    MIN_NORMAL_BITS: tl.constexpr,
    OVERFLOW_BITS: tl.constexpr,
    FINITE_OVERFLOW_BITS: tl.constexpr,
    ROUNDING: tl.constexpr,
    FLUSH_SUBNORMALS: tl.constexpr,
    NO_NEGATIVE_ZERO: tl.constexpr,  # ... element format
    SCALE_KIND: tl.constexpr,  # 0 E8M0, 1 float
    TENSOR_SCALE: tl.constexpr,  # two-level scaling
):
    """Q_elem(x / s) * s for one tile (the per-kind arithmetic of the module docstring)."""
    if SCALE_KIND == SCALE_E8M0:
        y = x * mult
    elif TENSOR_SCALE:
        y = tl.where(s == 0, x * 0.0, x * mult)
    else:
        y = tl.where(s == 0, x * 0.0, tl.math.div_rn(x, s))
    q = round_bits(
        y.to(tl.int32, bitcast=True), seed, index,
        MAN_BITS, EMIN, BIAS_PARITY, MAX_BITS, MIN_NORMAL_BITS, OVERFLOW_BITS, FINITE_OVERFLOW_BITS,
        ROUNDING, FLUSH_SUBNORMALS, NO_NEGATIVE_ZERO,
    ).to(tl.float32, bitcast=True)
    if TENSOR_SCALE:
        out = tl.math.div_rn(q * s, tensor_s)
    else:
        out = q * s
    return tl.where(bad, _f32(FP32_NAN_BITS), out)


def block_kernel_constexprs(spec: BlockSpec) -> dict:
    """The kernel's format/rule constexprs for a block cast (tiling comes from `tile_config`)."""
    e, sc = spec.elem, spec.scale
    return dict(
        **element_constexprs(e),
        ELEM_EMAX=spec.elem_emax,
        RULE=spec.rule,
        SCALE_KIND=spec.scale_kind,
        SCALE_MAN_BITS=sc.man_bits if sc else 0,
        SCALE_EMIN=sc.emin if sc else 0,
        SCALE_BIAS_PARITY=sc.bias_parity if sc else 0,
        SCALE_MAX_BITS=sc.max_bits if sc else 0,
        SCALE_MIN_NORMAL_BITS=sc.min_normal_bits if sc else 0,
        SCALE_OVERFLOW_BITS=sc.finite_overflow_bits if sc else 0,
        SCALE_FLUSH_SUBNORMALS=sc.flush_subnormals if sc else False,
        SCALE_NO_NEGATIVE_ZERO=sc.no_negative_zero if sc else False,
        TENSOR_SCALE=spec.tensor_scale,
    )


def tile_config(spec: BlockSpec, K: int) -> dict:
    """Tiling constexprs: whole blocks per program up to MAX_TILE elements, as many as fit along K first."""
    B, C = spec.block, spec.block_cols
    chunk = B * C if B * C <= MAX_TILE else CHUNK_SIZE
    nb = max(MAX_TILE // chunk, 1) if B * C <= MAX_TILE else 1
    cb = min(triton.next_power_of_2(triton.cdiv(K, B)), nb)
    return dict(B=B, C=C, CB=cb, NB=nb, CHUNK=chunk, NCHUNK=B * C // chunk)


def block_cast_triton(x2d: torch.Tensor, spec: BlockSpec, seed: int = 0) -> torch.Tensor:
    """Launch `block_cast_kernel` on a contiguous fp32 (rows, K) tensor (CUDA, or CPU under TRITON_INTERPRET=1)."""
    assert x2d.dtype == torch.float32 and x2d.dim() == 2, "the block kernel casts 2-D fp32 tensors"
    x2d = x2d.contiguous()
    y = torch.empty_like(x2d)
    rows, K = x2d.shape
    if x2d.numel() == 0:
        return y
    tiles = tile_config(spec, K)
    n_row_tiles = triton.cdiv(rows, tiles["C"] * (tiles["NB"] // tiles["CB"]))
    n_col_tiles = triton.cdiv(K, tiles["B"] * tiles["CB"])
    grid = (n_row_tiles * n_col_tiles,)
    amax_cell = torch.zeros(1, dtype=torch.int32, device=x2d.device)
    args = (x2d, y, amax_cell, rows, K, n_col_tiles, seed)
    consts = {**block_kernel_constexprs(spec), **tiles}
    if spec.tensor_scale:
        block_cast_kernel[grid](*args, **consts, AMAX_PASS=True, num_warps=NUM_WARPS)
    block_cast_kernel[grid](*args, **consts, AMAX_PASS=False, num_warps=NUM_WARPS)
    return y
