"""`quantize`: fake-quantize a tensor into a `FloatFormat` (Triton on CUDA, torch on CPU)."""

from __future__ import annotations

import functools
import math
import os
import struct

import torch

from precisionlab.kernels.cast_torch import SOURCE_FORMATS, cast_bits, philox_key
from precisionlab.kernels.compiled import COMPILE_MIN_NUMEL, compiled_graph
from precisionlab.kernels.spec import (
    FP32_INF_BITS,
    FP32_NAN_BITS,
    ROUNDING_MODES,
    RULES,
    SCALE_E8M0,
    SCALE_FLOAT,
    STOCHASTIC,
    BlockSpec,
    CastSpec,
)
from precisionlab.numerics.blocks import BlockFormat, parse_format
from precisionlab.numerics.formats import FloatFormat

__all__ = ["quantize", "quantize_scaled", "block_scaled", "tensor_scale", "amax_scale", "cast_spec", "block_spec", "ROUNDING_MODES", "BACKENDS"]

BACKENDS = ("auto", "torch", "triton")
_WIDENED = (torch.float16, torch.bfloat16)  # cast in fp32: widening them is exact

# CPU tensors of COMPILE_MIN_NUMEL elements or more go through a torch.compile'd (fused,
# vectorised) copy of the torch twin, one graph per spec (precisionlab/kernels/compiled.py), bit-identical
# to it. A process pays once for importing dynamo and inductor (~4 s) and then per spec ~0.2 s
# on a warm inductor cache (/tmp/torchinductor_$USER, or TORCHINDUCTOR_CACHE_DIR), 1-4 s cold.
# PRECISIONLAB_COMPILE=0 turns compiling off, PRECISIONLAB_COMPILE_MIN_NUMEL sets the size; a
# compile failure falls back to the eager twin.


def _fp32_bits(value: float) -> int:
    return struct.unpack("<I", struct.pack("<f", value))[0]


@functools.lru_cache(maxsize=None)
def cast_spec(fmt: FloatFormat, rounding: str, saturate: bool, subnormals: bool) -> CastSpec:
    """The integer constants that describe rounding into `fmt` with these options."""
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"unknown rounding {rounding!r}; accepted: {', '.join(ROUNDING_MODES)}")
    max_bits = _fp32_bits(fmt.max_finite)
    if saturate:
        overflow = max_bits
    elif fmt.has_inf:
        overflow = FP32_INF_BITS
    elif fmt.has_nan:
        overflow = FP32_NAN_BITS
    else:
        overflow = max_bits
    return CastSpec(
        man_bits=fmt.man_bits,
        emin=fmt.emin,
        bias_parity=fmt.bias & 1,
        max_bits=max_bits,
        min_normal_bits=_fp32_bits(fmt.min_normal),
        overflow_bits=overflow,
        rounding=ROUNDING_MODES.index(rounding),
        flush_subnormals=not (subnormals and fmt.has_subnormals),
        no_negative_zero=not fmt.has_negative_zero,
    )


@functools.lru_cache(maxsize=None)
def block_spec(fmt: BlockFormat, rounding: str, saturate: bool, subnormals: bool) -> BlockSpec:
    """The constants of a block cast: the elements round per the options, the scale always to nearest
    even, saturating, subnormals kept."""
    elem = cast_spec(fmt.element, rounding, saturate, subnormals)
    scale = None if fmt.scale_format is None else cast_spec(fmt.scale_format, "nearest_even", True, True)
    return BlockSpec(
        elem=elem,
        elem_emax=(elem.max_bits >> 23) - 127,
        block=fmt.block,
        block_cols=fmt.block_cols,
        rule=RULES.index(fmt.rule),
        scale_kind=SCALE_E8M0 if scale is None else SCALE_FLOAT,
        scale=scale,
        tensor_scale=fmt.tensor_scale,
    )


def quantize(
    x: torch.Tensor,
    fmt: FloatFormat | BlockFormat | str,
    *,
    axis: int = -1,
    rounding: str = "nearest_even",
    saturate: bool = True,
    subnormals: bool = True,
    seed: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Round every element of `x` to the nearest value of `fmt` (per `rounding`).

    Returns a new tensor of x's shape and dtype whose values are exactly
    representable in `fmt` (fp16/bf16 inputs are cast in fp32, which is exact,
    and stored back). Not differentiable: training wraps it in a
    straight-through autograd Function (`precisionlab.quant.linear`).

    Args:
      fmt: a `FloatFormat`, a `BlockFormat` or a name such as "e4m3fn", "e5m2", "e8m3", "bf16",
        "mxfp8", "nvfp4", "e2m1fn/b32/e8m0" (`parse_format`).
      axis: block formats only: blocks are B consecutive elements along this axis (the last
        block may be partial); 2-D blocks (B x C) need a 2-D tensor, C along the other axis.
        Ignored for element formats. On CPU, a result cast along another axis than the last
        may be a transposed view (the blocks' layout; call .contiguous() if you need one).
      rounding: "nearest_even" (IEEE default), "nearest_away" (ties away from
        zero), "toward_zero" (mantissa bit masking), "stochastic" (rounds up
        with probability equal to the discarded fraction, 31 random bits).
      saturate: overflow and ±Inf clamp to ±max_finite; if False they become
        the format's own overflow value: ±Inf if it has Inf, else NaN if it
        has NaN, else ±max_finite (as ml_dtypes casts do). Round-toward-zero
        never overflows a finite value past max_finite (IEEE 754).
      subnormals: if False, results below min_normal flush to signed zero.
      seed: Philox key for stochastic rounding; None draws one from torch's
        global generator, so `torch.manual_seed` makes runs reproducible.
      backend: "triton" (CUDA tensors, or CPU under TRITON_INTERPRET=1),
        "torch", or "auto" (Triton for CUDA fp32/fp16/bf16, torch otherwise).
        Both give identical bits, stochastic rounding included.

    NaN stays NaN even for formats that have no NaN code (so a training run
    can still see it diverge); signed zero is kept, except fnuz formats (+0).
    """
    fmt = parse_format(fmt)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"quantize needs a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point() or x.dtype not in (torch.float32, torch.float64, *_WIDENED):
        raise ValueError(f"quantize needs a float32, float64, float16 or bfloat16 tensor, got {x.dtype}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; accepted: {', '.join(BACKENDS)}")
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"unknown rounding {rounding!r}; accepted: {', '.join(ROUNDING_MODES)}")
    seed = _checked_seed(seed, rounding)
    if isinstance(fmt, BlockFormat):
        spec = block_spec(fmt, rounding, bool(saturate), bool(subnormals))
        return _quantize_blocks(x, spec, axis, seed, backend)
    spec = cast_spec(fmt, rounding, bool(saturate), bool(subnormals))

    work = x.detach()
    if work.dtype in _WIDENED:
        work = work.float()
    if backend == "auto":
        backend = "triton" if work.is_cuda and work.dtype == torch.float32 else "torch"
    if backend == "triton":
        if work.dtype != torch.float32:
            raise ValueError("backend='triton' casts float32/float16/bfloat16 tensors; use backend='torch' for float64")
        if not work.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("backend='triton' needs a CUDA tensor (or TRITON_INTERPRET=1 for CPU tensors)")
        from precisionlab.kernels.cast_triton import (
            cast_triton,  # triton imports lazily
        )

        out = cast_triton(work, spec, seed)
    else:
        bits = work.contiguous().view(SOURCE_FORMATS[work.dtype][0])
        key = philox_key(seed, bits.device) if spec.rounding == STOCHASTIC else 0  # data, not a graph constant
        out = _cast_bits_on_cpu(bits, spec)(bits, spec, work.dtype, key).view(work.dtype)
    return out.view(x.shape).to(x.dtype)


def tensor_scale(x: torch.Tensor, max_finite: float, pow2: bool = True) -> torch.Tensor:
    """Per-tensor current scale s for a format whose largest finite value is `max_finite`: x * s
    has amax max_finite or just below. A 0-d tensor of x's dtype on x's device (no host sync);
    1 when amax is 0, Inf or NaN (`amax_scale`)."""
    return amax_scale(x.detach().abs().amax().float(), max_finite, pow2)[0].to(x.dtype)


def amax_scale(amax: torch.Tensor, max_finite: float, pow2: bool = True, margin: int = 0):
    """(s, usable) for fp32 amax tensors: the scale that maps amax to max_finite / 2^margin or just
    below, and whether amax allows one (finite and > 0; elsewhere s is 1 and the caller decides).

    pow2: s = 2^(floor(log2(max_finite / amax)) - margin), exact from the binary exponents, so
    scaling and unscaling round nothing; otherwise Transformer Engine's s = (max_finite / amax) /
    2^margin (rounded to fp32). Both clamped to [2^-126, 2^126]."""
    usable = torch.isfinite(amax) & (amax > 0)
    amax = torch.where(usable, amax, torch.ones_like(amax))
    if pow2:
        # a = m 2^e, max = M 2^E with m, M in [0.5, 1): floor(log2(max / a)) = E - e - (m > M)
        m, e = torch.frexp(amax)
        big_m, big_e = math.frexp(max_finite)
        k = (big_e - e - (m > big_m).to(e.dtype) - margin).clamp(-126, 126)
        scale = torch.ldexp(torch.ones_like(amax), k)
    else:
        scale = ((max_finite / amax) / 2.0**margin).clamp(2.0**-126, 2.0**126)
    return torch.where(usable, scale, torch.ones_like(scale)), usable


def quantize_scaled(
    x: torch.Tensor,
    fmt: FloatFormat | str,
    *,
    pow2_scale: bool = True,
    rounding: str = "nearest_even",
    saturate: bool = True,
    subnormals: bool = True,
    seed: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Per-tensor current scaling around an element cast: `quantize(x * s, fmt) / s` with
    s = `tensor_scale(x, fmt.max_finite, pow2_scale)`; the other arguments as `quantize`'s.

    Large fp32 CPU tensors run one compiled graph per format and options (amax, scale, cast and
    unscale fused: two passes over x instead of eight eager ops), bit-identical to the eager
    composition."""
    fmt = parse_format(fmt)
    if not isinstance(fmt, FloatFormat):
        raise ValueError(f"per-tensor scaling takes an element format; {fmt} carries its own block scales")
    if (isinstance(x, torch.Tensor) and x.dtype == torch.float32 and backend in ("auto", "torch")
            and _compiling(x) and rounding in ROUNDING_MODES):
        spec = cast_spec(fmt, rounding, bool(saturate), bool(subnormals))
        seed = _checked_seed(seed, rounding)
        key = philox_key(seed) if spec.rounding == STOCHASTIC else 0
        pow2 = bool(pow2_scale)
        graph = _flat_graph(("scaled", spec, torch.float32, fmt.max_finite, pow2),
                            lambda: _scaled_cast(spec, fmt.max_finite, pow2))
        if graph is not None:
            return graph(x.detach().contiguous().view(torch.int32), key).view(torch.float32)
    scale = tensor_scale(x, fmt.max_finite, pow2_scale)
    kw = dict(rounding=rounding, saturate=saturate, subnormals=subnormals, seed=seed, backend=backend)
    return quantize(x * scale, fmt, **kw) / scale


def block_scaled(x: torch.Tensor, fmt: BlockFormat, *, axis: int = -1) -> torch.Tensor:
    """The elements of `x` scaled by their blocks' scales, as `quantize(x, fmt, axis=axis)` hands
    them to the element cast (fp32, x's shape): |value| > fmt.element.max_finite is an element the
    cast clips. Computed by the torch twin on any device (the scales do not depend on the element
    rounding); for numerical diagnostics, not for training."""
    from precisionlab.kernels.block_torch import block_scaled_torch

    spec = block_spec(fmt, "nearest_even", True, True)
    work = x.detach().float().reshape(x.shape or (1,))
    moved = work.movedim(axis, -1)
    x2d = moved.reshape(-1, moved.shape[-1])
    y = block_scaled_torch(x2d, spec) if x2d.numel() else x2d.clone()
    return y.view(moved.shape).movedim(-1, axis).reshape(x.shape)


def _checked_seed(seed: int | None, rounding: str) -> int:
    """The Philox key to use: `seed`, checked, or for stochastic rounding without one a draw from
    torch's global generator (so `torch.manual_seed` makes runs reproducible)."""
    if seed is None:
        return int(torch.randint(0, 2**62, ()).item()) if rounding == "stochastic" else 0
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2^63), got {seed}")
    return seed


def _quantize_blocks(x: torch.Tensor, spec: BlockSpec, axis: int, seed: int, backend: str) -> torch.Tensor:
    """Move the block axis last, cast the (rows, K) view block by block, move it back."""
    if x.dtype == torch.float64:
        raise ValueError("block formats cast float32, float16 or bfloat16 tensors (their scale arithmetic is fp32)")
    ndim = max(x.dim(), 1)  # a 0-d tensor is one block of one element
    if isinstance(axis, bool) or not isinstance(axis, int) or not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis!r} is out of range for a {x.dim()}-d tensor; accepted: -{ndim}..{ndim - 1}")
    if spec.block_cols > 1 and x.dim() != 2:
        raise ValueError(f"2-D blocks ({spec.block}x{spec.block_cols}) need a 2-D tensor, got {x.dim()}-d")
    work = x.detach().float()
    if work.dim() == 0:
        work = work.reshape(1)
    if backend == "auto":
        backend = "triton" if work.is_cuda else "torch"
    if (backend == "torch" and work.dim() == 2 and axis % 2 == 0 and spec.block_cols == 1
            and spec.elem.rounding != STOCHASTIC and work.numel()):
        # 1-D blocks down the columns are B x 1 blocks of the untransposed tensor: same blocks, same
        # bits, no transposed copies (stochastic rounding keeps the moved layout: its draws are
        # indexed by it)
        from precisionlab.kernels.block_torch import block_cast_torch

        columns = spec._replace(block=1, block_cols=spec.block)
        return block_cast_torch(work.contiguous(), columns, seed, compiled=_compiling(work)).to(x.dtype)
    moved = work.movedim(axis, -1)
    x2d = moved.reshape(-1, moved.shape[-1]).contiguous()
    if x2d.numel() == 0:
        out2d = x2d.clone()
    elif backend == "triton":
        if not work.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("backend='triton' needs a CUDA tensor (or TRITON_INTERPRET=1 for CPU tensors)")
        from precisionlab.kernels.block_triton import (
            block_cast_triton,  # helper "blockkernel"'s kernel
        )

        out2d = block_cast_triton(x2d, spec, seed)
    else:
        from precisionlab.kernels.block_torch import block_cast_torch

        compiled = _compiling(x2d)
        if spec.elem.rounding == STOCHASTIC:  # Philox key as data; partial blocks via the (compiled) element cast
            element_cast = _cast_bits_on_cpu(x2d, spec.elem)
            out2d = block_cast_torch(x2d, spec, philox_key(seed, x2d.device), compiled=compiled, element_cast=element_cast)
        else:
            out2d = block_cast_torch(x2d, spec, seed, compiled=compiled)
    out = out2d.view(moved.shape).movedim(-1, axis).reshape(x.shape)
    return out.to(x.dtype)  # a transposed view when the block axis is not last: no copy back


def _compiling(x: torch.Tensor) -> bool:
    """Whether a cast of `x` runs a compiled graph: large CPU tensors, unless turned off
    (COMPILE_MIN_NUMEL, PRECISIONLAB_COMPILE)."""
    return x.numel() >= COMPILE_MIN_NUMEL and not x.is_cuda and os.environ.get("PRECISIONLAB_COMPILE", "1") != "0"


def _cast_bits_on_cpu(bits: torch.Tensor, spec: CastSpec):
    """`cast_bits`, or for large CPU tensors its compiled graph for `spec` (same signature, same bits)."""
    if not _compiling(bits):
        return cast_bits
    dtype = torch.float64 if bits.dtype == torch.int64 else torch.float32
    graph = _flat_graph(("element", spec, dtype), lambda: _element_cast(spec, dtype))
    if graph is None:
        return cast_bits
    return lambda bits, _spec, _dtype, key: graph(bits, key)


def _element_cast(spec: CastSpec, dtype: torch.dtype):
    def element_cast(bits, key):
        return cast_bits(bits, spec, dtype, key)
    return element_cast


def _scaled_cast(spec: CastSpec, max_finite: float, pow2: bool):
    def scaled_cast(bits, key):
        x = bits.view(torch.float32)
        scale = tensor_scale(x, max_finite, pow2)
        q = cast_bits((x * scale).view(torch.int32), spec, torch.float32, key).view(torch.float32)
        return (q / scale).view(torch.int32)
    return scaled_cast


_flat: dict = {}  # key -> the shape-keeping wrapper of its compiled graph, or None


def _flat_graph(key: tuple, make_fn):
    """`make_fn()` (a function of (bits, philox key), key[1] its CastSpec, key[2] the float dtype of
    the bits) compiled once per key for flat bit patterns of any length (`compiled_graph`), wrapped
    to take tensors of any shape; None where compiling fails."""
    if key not in _flat:
        spec, dtype = key[1], key[2]

        def make_probe():
            bits = torch.zeros(max(COMPILE_MIN_NUMEL, 2), dtype=SOURCE_FORMATS[dtype][0])
            return bits, philox_key(0) if spec.rounding == STOCHASTIC else 0

        graph = compiled_graph(key, make_fn, make_probe, dynamic={0: (0,)})
        _flat[key] = None if graph is None else (lambda bits, philox: graph(bits.reshape(-1), philox).view(bits.shape))
    return _flat[key]
