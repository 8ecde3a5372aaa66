"""Oracle formats and probe inputs for the cast tests.

Everything a test compares against comes from ml_dtypes, torch dtypes or
gfloat; this module only spells those oracles' formats and builds inputs.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
from gfloat import FormatInfo
from gfloat.types import Domain

# our name -> ml_dtypes type (saturate=False, round-to-nearest-even casts)
ML_DTYPES = {
    "e5m2": ml_dtypes.float8_e5m2,
    "e4m3": ml_dtypes.float8_e4m3,
    "e3m4": ml_dtypes.float8_e3m4,
    "e4m3fn": ml_dtypes.float8_e4m3fn,
    "e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
    "e5m2fnuz": ml_dtypes.float8_e5m2fnuz,
    "e2m3fn": ml_dtypes.float6_e2m3fn,
    "e3m2fn": ml_dtypes.float6_e3m2fn,
    "e2m1fn": ml_dtypes.float4_e2m1fn,
}


def ieee_like(e: int, m: int, has_subnormals: bool = True) -> FormatInfo:
    """gfloat FormatInfo of an IEEE-754-style ExMy: top exponent code is Inf/NaN."""
    return FormatInfo(
        name=f"e{e}m{m}",
        k=1 + e + m,
        precision=m + 1,
        bias=2 ** (e - 1) - 1,
        is_signed=True,
        domain=Domain.Extended,
        has_nz=True,
        num_high_nans=2**m - 1,
        has_subnormals=has_subnormals,
        is_twos_complement=False,
    )


def ocp_finite(e: int, m: int) -> FormatInfo:
    """gfloat FormatInfo of OCP-style eXmYfn: no Inf; 8+ bits: all-ones is NaN."""
    return FormatInfo(
        name=f"e{e}m{m}fn",
        k=1 + e + m,
        precision=m + 1,
        bias=2 ** (e - 1) - 1,
        is_signed=True,
        domain=Domain.Finite,
        has_nz=True,
        num_high_nans=1 if 1 + e + m >= 8 else 0,
        has_subnormals=True,
        is_twos_complement=False,
    )


def fnuz(e: int, m: int) -> FormatInfo:
    """gfloat FormatInfo of eXmYfnuz: no Inf, no -0 (its code is the NaN), bias 2^(E-1)."""
    return FormatInfo(
        name=f"e{e}m{m}fnuz",
        k=1 + e + m,
        precision=m + 1,
        bias=2 ** (e - 1),
        is_signed=True,
        domain=Domain.Finite,
        has_nz=False,
        num_high_nans=0,
        has_subnormals=True,
        is_twos_complement=False,
    )


def all_bf16_patterns() -> np.ndarray:
    """Every bf16 bit pattern, widened exactly to fp32."""
    return (np.arange(2**16, dtype=np.uint32) << 16).view(np.float32)


def random_fp32(n: int, seed: int = 0) -> np.ndarray:
    """Uniform random bit patterns: every exponent (and Inf/NaN) equally likely."""
    return np.random.default_rng(seed).integers(0, 2**32, n, dtype=np.uint32).view(np.float32)


def probe_inputs(values: np.ndarray) -> np.ndarray:
    """Codes, midpoints between neighbours, one fp32 ulp either side, and specials.

    `values` are a format's finite values (ascending). The value one top-binade
    ulp past max_finite is added so the overflow threshold is probed too.
    """
    v = np.unique(values.astype(np.float64))
    top_ulp = v[-1] - v[-2]
    v = np.concatenate([[-v[-1] - top_ulp], v, [v[-1] + top_ulp]])
    mids = ((v[:-1] + v[1:]) / 2).astype(np.float32)
    up = np.nextafter(mids, np.float32(np.inf))
    down = np.nextafter(mids, np.float32(-np.inf))
    tiny = np.array([1, 2, 3, 0x7FFFFF, 0x400000, 0x400001], dtype=np.uint32).view(np.float32)  # fp32 subnormals
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, np.finfo(np.float32).max, -np.finfo(np.float32).max])
    pieces = [v, mids, up, down, tiny, -tiny, specials]
    return np.concatenate([p.astype(np.float32) for p in pieces])


def assert_same_bits(ours: np.ndarray, ref: np.ndarray, x: np.ndarray, what: str) -> None:
    """Bit-for-bit equality; NaN matches any NaN."""
    ours, ref, x = (np.asarray(a, dtype=np.float32).ravel() for a in (ours, ref, x))
    same = (ours.view(np.uint32) == ref.view(np.uint32)) | (np.isnan(ours) & np.isnan(ref))
    if not same.all():
        bad = np.flatnonzero(~same)[:8]
        rows = ", ".join(f"{x[i]!r}->{ours[i]!r} (oracle {ref[i]!r})" for i in bad)
        raise AssertionError(f"{what}: {(~same).sum()} of {same.size} differ, e.g. {rows}")
