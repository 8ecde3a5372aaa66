"""Pure-torch twin of `block_triton.py`: block-scaled fake quantization, vectorised.

`block_cast_torch(x2d, spec, seed)` casts a contiguous fp32 (rows, K) tensor in blocks of
B consecutive elements along dim 1, times C consecutive rows (2-D blocks) along dim 0; a last
partial block (K % B, rows % C) is a block of its real elements. It computes, per block
(the README's "Block-scaled formats" spells the arithmetic):

  amax      max |x| over the block, a float max, so a NaN propagates; a NaN/Inf block -> all NaN
  E8M0      k = floor(log2 amax) - emax_elem from amax's fp32 exponent bits (subnormals normalised
            exactly), + 1 for rceil when amax's mantissa exceeds max_elem's (exact ceil(log2(amax /
            max_elem)), no log2), clamped to [-127, 127]; amax == 0 -> k = 0 (the block stays zero);
            q = Q_elem(x * 2^-k), x_hat = q * 2^k (exact: both factors are powers of two)
  amax      s = Q_scale(amax / max_elem) (scale format, nearest even, saturating); s == 0 -> zeros;
            x_hat = Q_elem(x / s) * s
  NVFP4     Transformer Engine's reference arithmetic (all fp32), generalised to any element and
  (tensor)  scale format (448 -> scale max SM, 6 -> element max EM):
              S   = min(SM*EM / amax_t, FLT_MAX)  (1 if amax_t == 0; amax_t over finite blocks only)
              s_b = Q_scale(min(amax * (S * (1/EM)), SM))
              enc = 1 / (s_b * (1/S));  q = Q_elem(x * enc)  (s_b == 0 -> zeros);  x_hat = (q * s_b) / S

All of it is one form: y = (x * m) / d per block, q = Q_elem(y) (the element cast `cast_bits`, every
rounding mode), x_hat = (q * a) / b, with m, d, a, b per-block fp32 factors (1 where a form has none:
exact). Stochastic rounding: element (r, k) draws philox(seed, r * K + k), as the element cast of
the whole (rows, K) tensor would.

How torchao 0.18's references differ (tests/numerics/test_blocks_torchao.py shows each):
  to_mx FLOOR  the scale is clamped to >= 2^-126 (fp32's smallest normal) instead of E8M0's 2^-127;
               an Inf block gets scale 2^127 and saturated elements instead of NaN.
  to_mx RCEIL  descale = amax / max_pos rounded to fp32, then ceil(log2(descale)) in floating point:
               when amax / max_pos lies just above a power of two the rounding (or log2) lands on
               it and the block clips its amax; an Inf block is not NaN.
  NVFP4        scale = (amax / 6) / (amax_t / 2688), clamped to [2^-6, 448] before the e4m3fn
               cast (TE: amax * (S * (1/6)), no lower clamp, s_b may be 0 or subnormal);
               encode x * ((1/pts) / s_b), decode q * (pts * s_b) (TE: x * (1/(s_b * (1/S))),
               (q * s_b) / S): different roundings of the same real numbers, so corner cases differ.
               torchao's amax_t is an input (calibration); here it is the tensor's finite amax.

Large CPU calls (no stochastic rounding) run a torch.compile'd copy of `_fused`, bit-identical
to the eager one (tests check); no divisor is a Python constant inside it, because inductor
turns a division by a constant into a multiplication by its rounded reciprocal.
"""

from __future__ import annotations

import functools

import torch

from .cast_torch import cast_bits, philox_key
from .compiled import COMPILE_MIN_NUMEL, compiled_graph
from .spec import RULE_RCEIL, SCALE_E8M0, STOCHASTIC, BlockSpec

__all__ = ["block_cast_torch", "block_scaled_torch"]

FLT_MAX = 3.4028234663852886e38
_TINY = 2.0**-126  # fp32's smallest normal: amax below it is normalised by 2^64 to read its exponent


def _exp2i(k: torch.Tensor) -> torch.Tensor:
    """2^k in fp32 for int32 k in [-127, 127], exactly (2^-127 is the subnormal 0x00400000)."""
    bits = torch.where(k >= -126, (k + 127) << 23, 1 << (k + 149).clamp(min=0, max=22))
    return bits.view(torch.float32)


def _qcast(v: torch.Tensor, spec, key: torch.Tensor | int = 0) -> torch.Tensor:
    return cast_bits(v.contiguous().view(torch.int32), spec, torch.float32, key).view(torch.float32)


def _factors(amax: torch.Tensor, spec: BlockSpec, consts: torch.Tensor, S: torch.Tensor | None):
    """Per-block (m, d, a, b): y = (x * m) / d, x_hat = (Q(y) * a) / b."""
    one = torch.ones_like(amax)
    if spec.scale_kind == SCALE_E8M0:
        sub = amax < _TINY
        bits = torch.where(sub, amax * 2.0**64, amax).view(torch.int32)
        k = (bits >> 23) - 127 - sub.to(torch.int32) * 64 - spec.elem_emax
        if spec.rule == RULE_RCEIL:
            k = k + ((bits & 0x7FFFFF) > (spec.elem.max_bits & 0x7FFFFF)).to(torch.int32)
        k = torch.where(amax == 0, 0, k.clamp(-127, 127))
        return _exp2i(-k), one, _exp2i(k), one
    elem_max, scale_max, inv_elem_max = consts[0], consts[1], consts[2]
    if not spec.tensor_scale:
        s = _qcast(amax / elem_max, spec.scale)
        zero = s == 0
        return torch.where(zero, 0.0, one), torch.where(zero, one, s), s, one
    s_b = _qcast(torch.minimum(amax * (S * inv_elem_max), scale_max), spec.scale)
    enc = 1 / (s_b * (1 / S))
    return torch.where(s_b == 0, 0.0, enc), one, s_b, S.expand_as(amax)


def _tensor_scale(amax_t: torch.Tensor, consts: torch.Tensor) -> torch.Tensor:
    """NVFP4's S = min(SM*EM / amax_t, FLT_MAX), 1 for an all-zero tensor."""
    return torch.where(amax_t == 0, 1.0, (consts[3] / amax_t).clamp(max=FLT_MAX))


def _block_amax(xv: torch.Tensor) -> torch.Tensor:
    return xv.abs().amax(dim=(1, 3), keepdim=True)  # (G, 1, N, 1); NaN propagates


def _fused(xv: torch.Tensor, spec: BlockSpec, consts: torch.Tensor, S: torch.Tensor | None,
           key: torch.Tensor | int = 0) -> torch.Tensor:
    """One region (G, Cr, N, Br) of blocks (Cr x Br each): amax, scale and cast. Stochastic rounding
    (`key`) only for a region that is the whole contiguous tensor, so that element (r, k) is
    element r * K + k of the scaled tensor and draws philox(seed, r * K + k)."""
    amax = _block_amax(xv)
    if spec.tensor_scale and S is None:  # the region is the whole tensor: its tensor scale in the same graph
        S = _tensor_scale(_finite_max(amax), consts)
    m, d, a, b = _factors(amax, spec, consts, S)
    q = _qcast((xv * m) / d, spec.elem, key)
    return torch.where(torch.isfinite(amax), (q * a) / b, float("nan"))


def _finite_max(amax: torch.Tensor) -> torch.Tensor:
    """The largest finite block amax (NaN/Inf blocks do not set the tensor scale)."""
    return torch.where(torch.isfinite(amax), amax, 0.0).amax()


def _finite_amax(xv: torch.Tensor) -> torch.Tensor:
    return _finite_max(_block_amax(xv))


def _regions(rows: int, K: int, B: int, C: int):
    """(row slice, column slice, Cr, Br) of the full blocks and of the partial tails."""
    kf, rf = K - K % B, rows - rows % C
    out = []
    for r0, r1, cr in ((0, rf, C), (rf, rows, rows - rf)):
        for k0, k1, br in ((0, kf, B), (kf, K, K - kf)):
            if r1 > r0 and k1 > k0:
                out.append((slice(r0, r1), slice(k0, k1), cr, br))
    return out


def _blocked(t: torch.Tensor, rs: slice, ks: slice, cr: int, br: int) -> torch.Tensor:
    """A view (G, Cr, N, Br) of region (rs, ks) of the (rows, K) tensor t."""
    return t[rs, ks].unflatten(1, (-1, br)).unflatten(0, (-1, cr))


@functools.lru_cache(maxsize=256)
def _consts(spec: BlockSpec, device) -> torch.Tensor:
    """[EM, SM, fp32(1/EM), fp32(SM*EM)] as a tensor (never Python constants inside a compiled graph);
    built once per spec and device (read only)."""
    if spec.scale is None:
        return torch.zeros(4, device=device)
    v = torch.tensor([spec.elem.max_bits, spec.scale.max_bits], dtype=torch.int32).view(torch.float32)
    em, sm = v[0:1], v[1:2]
    return torch.cat([em, sm, 1 / em, sm * em]).to(device)


def block_cast_torch(
    x: torch.Tensor, spec: BlockSpec, seed: int | torch.Tensor = 0, compiled: bool = False, element_cast=cast_bits
) -> torch.Tensor:
    """Fake-quantize contiguous fp32 `x` (rows, K) in blocks per `spec`; returns a new (rows, K) tensor.

    `compiled` runs large casts through the torch.compile'd `_fused` (same bits). Stochastic
    rounding of a tensor with partial blocks casts the scaled elements with `element_cast`
    (`cast_bits` or a compiled copy of it, same bits); `seed` is an int or its `philox_key` tensor.
    """
    if x.dtype != torch.float32 or x.dim() != 2:
        raise ValueError(f"block_cast_torch takes a 2-D float32 tensor, got {x.dim()}-d {x.dtype}")
    x = x.contiguous()
    rows, K = x.shape
    regions = _regions(rows, K, spec.block, spec.block_cols)
    views = [_blocked(x, *r) for r in regions]
    consts = _consts(spec, x.device)
    fused = _compiled_fused(spec) if compiled else _fused
    S = None
    if spec.tensor_scale and len(regions) > 1:  # one region computes it inside `fused`
        S = _tensor_scale_of(views, consts, _compiled_finite_amax() if fused is not _fused else _finite_amax)

    if spec.elem.rounding == STOCHASTIC and len(regions) == 1:  # whole blocks only: one pass, as any other rounding
        return fused(views[0], spec, consts, S, seed).reshape(rows, K)
    if spec.elem.rounding != STOCHASTIC:
        if len(regions) == 1:
            return fused(views[0], spec, consts, S).reshape(rows, K)
        out = torch.empty_like(x)
        for r, v in zip(regions, views):
            _blocked(out, *r).copy_(fused(v, spec, consts, S))
        return out

    # Stochastic: scale every region into one (rows, K) buffer so each element's random index is r*K + k.
    y, post = _scaled_regions(x, spec, regions, views, consts, S)
    q = element_cast(y.view(torch.int32), spec.elem, torch.float32, seed).view(torch.float32)
    out = torch.empty_like(x)
    for r, (a, b, finite) in zip(regions, post):
        _blocked(out, *r).copy_(torch.where(finite, (_blocked(q, *r) * a) / b, float("nan")))
    return out


def _tensor_scale_of(views: list[torch.Tensor], consts: torch.Tensor, finite_amax=_finite_amax) -> torch.Tensor:
    """The tensor scale S of a tensor cut into the regions `views`."""
    return _tensor_scale(torch.stack([finite_amax(v) for v in views]).amax(), consts)


def _scaled_regions(x, spec: BlockSpec, regions, views, consts, S):
    """y = (x * m) / d of every region in one (rows, K) buffer, and each region's (a, b, finite block)."""
    y = torch.empty_like(x)
    post = []
    for r, v in zip(regions, views):
        amax = _block_amax(v)
        m, d, a, b = _factors(amax, spec, consts, S)
        _blocked(y, *r).copy_((v * m) / d)
        post.append((a, b, torch.isfinite(amax)))
    return y, post


def block_scaled_torch(x: torch.Tensor, spec: BlockSpec) -> torch.Tensor:
    """The elements of the contiguous fp32 (rows, K) `x` as `block_cast_torch` hands them to the
    element cast: y = (x * m) / d with each block's factors, (rows, K). An element with |y| above
    the element format's largest finite value is one the cast clips (numerical diagnostics)."""
    x = x.contiguous()
    regions = _regions(*x.shape, spec.block, spec.block_cols)
    views = [_blocked(x, *r) for r in regions]
    consts = _consts(spec, x.device)
    S = _tensor_scale_of(views, consts) if spec.tensor_scale else None
    return _scaled_regions(x, spec, regions, views, consts, S)[0]


def _compiled_fused(spec: BlockSpec):
    """`_fused` for `spec` compiled (`compiled_graph`: one graph per spec, its sizes dynamic), or
    the eager one where compiling fails."""
    def make_fn():
        def fused_blocks(xv, consts, S, key):
            return _fused(xv, spec, consts, S, key)
        return fused_blocks

    def make_probe():  # (G, Cr, N, Br) with G x N blocks, as many elements as the smallest compiled cast
        n = max(2, COMPILE_MIN_NUMEL // (4 * spec.block * spec.block_cols))
        xv = torch.zeros(4, spec.block_cols, n, spec.block)
        return xv, _consts(spec, xv.device), None, philox_key(0) if spec.elem.rounding == STOCHASTIC else 0

    graph = compiled_graph(("block", spec), make_fn, make_probe, dynamic={0: (0, 2)})
    if graph is None:
        return _fused
    return lambda xv, _spec, consts, S, key=0: graph(xv, consts, S, key)


_compiled_amax = None


def _compiled_finite_amax():
    """torch.compile'd `_finite_amax` (the tensor-scale pass of a tensor with partial blocks: one
    fused read per region instead of four passes)."""
    global _compiled_amax
    if _compiled_amax is None:
        _compiled_amax = torch.compile(_finite_amax, dynamic=True)
    return _compiled_amax
