"""Pure-torch twin of `cast_triton.py`: the same integer arithmetic, vectorised.

Works on fp32 (int32 bit patterns) and fp64 (int64) tensors on any device.
For every deterministic rounding mode it is bit-identical to the Triton kernel,
and for stochastic rounding it draws the very same Philox-4x32-10 stream as
`tl.randint(seed, element_index)`, so CPU and GPU runs agree bit for bit.

The algorithm, for a magnitude a = sig * 2^(e - P) (P stored mantissa bits of
the source, sig including the implicit bit):
  s     = max(e, emin) - M           exponent of the target ulp at this value
  shift = s - (e - P)                 low bits of sig below that ulp (>= 0)
  n     = round(sig / 2^shift)        integer significand, per rounding mode
  |q|   = n * 2^s                     exact in the source format
then overflow, flush-to-zero, Inf/NaN and the sign are applied. Deterministic
casts of fp32 take shortcuts that give the same values in a fraction of the work
(`cast_bits(..., specialised=False)` is the general algorithm alone, for tests):
  - formats whose exponent range reaches fp32's at the bottom (emin = -126: bf16,
    e8m3, ...): one integer add and a mask (`_round_bit_patterns`);
  - narrower formats (fp16, e4m3fn, e5m2, e2m1fn, ...): the same add and mask at and
    above the format's smallest normal, where its grid is fp32's with the low bits
    cleared, and below it, where the grid is a fixed ulp, a float rounding of the
    value scaled by a power of two (`_round_split`).
"""

from __future__ import annotations

import torch

from .spec import NEAREST_AWAY, NEAREST_EVEN, STOCHASTIC, TOWARD_ZERO, CastSpec

__all__ = ["cast_torch", "cast_bits", "philox_randint", "philox_key", "SOURCE_FORMATS", "allow_graph_variants"]

# Source-format constants: (int dtype, stored mantissa bits, exponent bias).
SOURCE_FORMATS = {torch.float32: (torch.int32, 23, 127), torch.float64: (torch.int64, 52, 1023)}

_PHILOX_KEY_A, _PHILOX_KEY_B = 0x9E3779B9, 0xBB67AE85
_PHILOX_ROUND_A, _PHILOX_ROUND_B = 0xD2511F53, 0xCD9E8D57
_U32 = 0xFFFFFFFF


def allow_graph_variants(n: int) -> None:
    """Let a torch.compile'd cast keep `n` graphs (one per spec variant: rounding, flush, format
    family, ...) before dynamo falls back to eager. Dynamo's limit is process-wide and per code
    object; this raises it once (never lowers it) instead of patching the config around every
    call, which costs more than a small cast."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    if getattr(config, name) < n:
        setattr(config, name, n)


def philox_key(seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A 64-bit Philox key as an int64 tensor [k0, k1] (low, high 32 bits).

    Passing the key as a tensor keeps it data, not a constant, inside `torch.compile`d graphs:
    one graph serves every seed.
    """
    return torch.tensor([seed & _U32, (seed >> 32) & _U32], dtype=torch.int64, device=device)


def philox_randint(seed: int | torch.Tensor, offsets: torch.Tensor, n_rounds: int = 10) -> torch.Tensor:
    """Triton's `tl.randint(seed, offsets)` (first Philox-4x32 output) as int64 in [0, 2^32).

    `seed` is an int in [0, 2^64) or its `philox_key` tensor. Each round's 32 x 32 -> 64-bit
    products are one int64 multiply: the product of two values below 2^32 can exceed 2^63,
    but int64 multiplication wraps, so its 64 bits are the unsigned product's exactly
    (two's complement), and `>> 32` then `& 0xFFFFFFFF` is its high word.
    """
    key = seed if isinstance(seed, torch.Tensor) else philox_key(seed, offsets.device)
    k0, k1 = key[0], key[1]
    offsets = offsets.to(torch.int64)
    c0, c1 = offsets & _U32, (offsets >> 32) & _U32
    c2 = c3 = torch.zeros_like(c0)
    for _ in range(n_rounds):
        prod_b, prod_a = c2 * _PHILOX_ROUND_B, c0 * _PHILOX_ROUND_A
        c0, c1 = ((prod_b >> 32) & _U32) ^ c1 ^ k0, prod_b & _U32
        c2, c3 = ((prod_a >> 32) & _U32) ^ c3 ^ k1, prod_a & _U32
        k0, k1 = (k0 + _PHILOX_KEY_A) & _U32, (k1 + _PHILOX_KEY_B) & _U32
    return c0


def _pow2(s: torch.Tensor, float_dtype: torch.dtype, int_dtype: torch.dtype, man: int, bias: int) -> torch.Tensor:
    """2^s exactly, for integer tensors s within the source format (subnormals included)."""
    normal = (s + bias) << man
    subnormal = torch.ones_like(s) << (s + bias + man - 1).clamp(min=0)
    return torch.where(s >= 1 - bias, normal, subnormal).view(float_dtype)


def cast_torch(x: torch.Tensor, spec: CastSpec, seed: int = 0, offset: int = 0) -> torch.Tensor:
    """Round every element of fp32/fp64 `x` into the format described by `spec`.

    `seed` and `offset` only matter for stochastic rounding: element i of the
    (contiguous) tensor uses random word `philox(seed, offset + i)`.
    """
    int_dtype = SOURCE_FORMATS[x.dtype][0]
    return cast_bits(x.contiguous().view(int_dtype), spec, x.dtype, seed, offset).view(x.dtype)


def cast_bits(
    u: torch.Tensor, spec: CastSpec, dtype: torch.dtype, seed: int | torch.Tensor = 0, offset: int = 0,
    specialised: bool = True,
) -> torch.Tensor:
    """`cast_torch` on the bit patterns `u` of a float tensor of `dtype`; returns bit patterns.

    `seed` may be a `philox_key` tensor (data, not a constant, in a `torch.compile`d graph).
    `specialised=False` takes the general algorithm for every format and mode (the module
    docstring's shortcuts are checked against it).
    """
    int_dtype, P, src_bias = SOURCE_FORMATS[dtype]
    width = 32 if int_dtype == torch.int32 else 64
    sign_mask = -(1 << (width - 1))  # the sign bit, as a signed constant
    inf_bits = ((1 << (width - P - 1)) - 1) << P
    M = spec.man_bits

    a = u & ~sign_mask  # magnitude bits
    path = _shortcut(spec, dtype) if specialised else None
    if path == "mask":
        mag = _round_bit_patterns(a, P - M, spec.rounding)  # E8 formats: fp32's grid, low bits cleared
    elif path == "split":
        mag = _round_split(a, spec)
    else:
        mag = _round_on_grid(a, spec, dtype, seed, offset)

    max_bits, min_normal_bits, overflow_bits, finite_overflow_bits = _to_source_bits(spec, dtype)
    if spec.flush_subnormals:
        mag = torch.where(mag < min_normal_bits, 0, mag)
    mag = torch.where(mag > max_bits, finite_overflow_bits, mag)
    mag = torch.where(a == inf_bits, overflow_bits, mag)
    mag = torch.where(a > inf_bits, a, mag)  # NaN in, same NaN out
    sign = u & sign_mask
    if spec.no_negative_zero:
        sign = torch.where(mag == 0, 0, sign)
    return mag | sign


def _shortcut(spec: CastSpec, dtype: torch.dtype) -> str | None:
    """Which shortcut (module docstring) serves this cast of `dtype` values: "mask", "split" or None."""
    M = spec.man_bits
    if dtype != torch.float32 or spec.rounding == STOCHASTIC or not 0 < M < 23:
        return None
    if spec.emin == -126:
        return "mask"
    if -126 < spec.emin and spec.emin - M >= -149:  # the format's smallest subnormal is an fp32 number
        return "split"
    return None


def _round_split(a: torch.Tensor, spec: CastSpec) -> torch.Tensor:
    """fp32 magnitude bits rounded into a format with a narrower exponent range (deterministic
    modes, 0 < M < 23). At and above its smallest normal the grid is fp32's with the low 23 - M
    bits cleared: add and mask. Below it the grid is the fixed ulp 2^(emin - M): the value times
    2^(M - emin) is rounded to an integer, then scaled back; both scalings are by powers of two and
    stay within fp32's range (emin - M >= -149), so they are exact. NaN, Inf and overflow are the
    caller's."""
    M, emin = spec.man_bits, spec.emin
    normal = _round_bit_patterns(a, 23 - M, spec.rounding)
    n = a.view(torch.float32) * 2.0 ** (M - emin)  # below the smallest normal: in [0, 2^M)
    if spec.rounding == NEAREST_EVEN:
        q = torch.round(n)  # half to even
    elif spec.rounding == TOWARD_ZERO:
        q = torch.trunc(n)
    else:  # NEAREST_AWAY: n - trunc(n) is exact, so the tie test is too
        q = torch.trunc(n)
        q = torch.where(n - q >= 0.5, q + 1, q)
    subnormal = (q * 2.0 ** (emin - M)).view(torch.int32)
    return torch.where(a < spec.min_normal_bits, subnormal, normal)


def _round_on_grid(a: torch.Tensor, spec: CastSpec, dtype: torch.dtype, seed, offset: int) -> torch.Tensor:
    """Magnitude bits `a` rounded to the target grid per the module docstring's algorithm (every
    format and mode; NaN/Inf/overflow are the caller's)."""
    int_dtype, P, src_bias = SOURCE_FORMATS[dtype]
    width = 32 if int_dtype == torch.int32 else 64
    M = spec.man_bits
    biased_exp = a >> P
    e = biased_exp.clamp(min=1) - src_bias
    sig = (a & ((1 << P) - 1)) | ((biased_exp > 0).to(int_dtype) << P)

    s = e.clamp(min=spec.emin) - M
    shift = s - (e - P)
    sh = shift.clamp(max=P + 2)  # sig < 2^(P+1): larger shifts behave alike
    n = sig >> sh
    rem = sig - (n << sh)
    full = torch.ones_like(sh) << sh  # 2^sh; ties are compared as 2*rem vs full

    if spec.rounding == NEAREST_EVEN:
        # ties (2*rem == full) go up only from an odd code: one compare does both
        odd = (n & 1) if M > 0 else ((n != 0) & (((s + spec.bias_parity) & 1) == 1)).to(int_dtype)
        up = 2 * rem + odd > full
    elif spec.rounding == NEAREST_AWAY:
        up = 2 * rem >= full  # rem == 0 never passes: full >= 1
    elif spec.rounding == TOWARD_ZERO:
        up = torch.zeros_like(rem, dtype=torch.bool)
    elif spec.rounding == STOCHASTIC:
        # rem / 2^shift as a 31-bit fraction; round up with exactly that probability
        frac31 = torch.where(
            shift <= 31,
            rem << (31 - shift).clamp(min=0),
            rem >> (shift - 31).clamp(min=0, max=width - 1),
        )
        index = torch.arange(a.numel(), device=a.device, dtype=torch.int64).view(a.shape) + offset
        rand31 = (philox_randint(seed, index) >> 1).to(int_dtype)
        up = rand31 < frac31
    else:
        raise ValueError(f"unknown rounding code {spec.rounding}")
    n = n + up.to(int_dtype)

    mag = (n.to(dtype) * _pow2(s, dtype, int_dtype, P, src_bias)).view(int_dtype)
    return mag


def _round_bit_patterns(a: torch.Tensor, drop: int, rounding: int) -> torch.Tensor:
    """fp32 magnitude bits rounded to `drop` fewer mantissa bits by one integer add and a mask.
    Exact for targets with fp32's exponent range at the bottom (emin = -126: the E8 formats),
    whose grid is fp32's bit grid with the low `drop` bits cleared, subnormals included; a carry
    out of the mantissa steps into the next binade's first value, as rounding up should. NaN,
    Inf and overflow are the caller's (they may wrap here and are replaced)."""
    low = (1 << drop) - 1
    if rounding == NEAREST_EVEN:
        a = a + ((low >> 1) + ((a >> drop) & 1))  # a tie carries only from an odd last kept bit
    elif rounding == NEAREST_AWAY:
        a = a + (1 << (drop - 1))
    return a & -(1 << drop)  # ~low, spelled so dynamo traces it


def _to_source_bits(spec: CastSpec, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """The spec's fp32 bit constants re-encoded in the source dtype (identity for fp32)."""
    words = [spec.max_bits, spec.min_normal_bits, spec.overflow_bits, spec.finite_overflow_bits]
    if dtype == torch.float32:
        return tuple(words)
    as_fp32 = torch.tensor(words, dtype=torch.int64).to(torch.int32).view(torch.float32)
    return tuple(as_fp32.to(dtype).view(torch.int64).tolist())
