"""Independent references for block-scaled casts (never our own implementation).

Blocks are described by a block id per element (numpy), so the references share nothing with
the twin's strided views: gfloat's block API for OCP MX (floor), the rceil formula and the
NVFP4 / amax arithmetic written out in numpy (float64 for exact exponents, float32 for NVFP4).
"""

from __future__ import annotations

import numpy as np
from gfloat import RoundMode, round_ndarray
from gfloat.block import BlockFormatInfo, compute_scale_amax, quantize_block
from gfloat.formats import (
    format_info_ocp_e2m1,
    format_info_ocp_e2m3,
    format_info_ocp_e3m2,
    format_info_ocp_e4m3,
    format_info_ocp_e5m2,
    format_info_ocp_e8m0,
)

# our element name -> gfloat FormatInfo (OCP element formats)
GFLOAT_ELEMENTS = {
    "e4m3fn": format_info_ocp_e4m3,
    "e5m2": format_info_ocp_e5m2,
    "e2m3fn": format_info_ocp_e2m3,
    "e3m2fn": format_info_ocp_e3m2,
    "e2m1fn": format_info_ocp_e2m1,
}
GFLOAT_ROUNDING = {
    "nearest_even": RoundMode.TiesToEven,
    "nearest_away": RoundMode.TiesToAway,
    "toward_zero": RoundMode.TowardZero,
}
F32 = np.float32


def block_ids(rows: int, cols: int, B: int, C: int = 1) -> np.ndarray:
    """Block number of every element of a (rows, cols) array: B along axis 1, C rows along axis 0."""
    nb = -(-cols // B)
    r, k = np.indices((rows, cols))
    return (r // C) * nb + k // B


def block_amax(x: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """max |x| per block (NaN propagates), indexed by block id."""
    amax = np.zeros(ids.max() + 1, dtype=x.dtype)
    with np.errstate(invalid="ignore"):
        np.maximum.at(amax, ids.ravel(), np.abs(x).ravel())
    return amax


def gfloat_mx(x: np.ndarray, element: str, B: int, rounding: str = "nearest_even", C: int = 1) -> np.ndarray:
    """OCP MX (rule floor) through gfloat's quantize_block, fed float64, block by block."""
    fi = BlockFormatInfo("mx", GFLOAT_ELEMENTS[element], B * C, format_info_ocp_e8m0)
    ids = block_ids(*x.shape, B, C)
    out = np.empty(x.shape, dtype=np.float64)
    flat_x, flat_out = x.astype(np.float64).ravel(), out.ravel()
    for b in range(ids.max() + 1):
        where = np.flatnonzero(ids.ravel() == b)
        if np.isnan(compute_scale_amax(fi.etype.emax, flat_x[where])):
            flat_out[where] = np.nan  # E8M0's NaN scale decodes every element to NaN (gfloat's rounding of
            continue  # the elements would raise first for element formats without a NaN)
        flat_out[where] = quantize_block(fi, flat_x[where], compute_scale_amax, GFLOAT_ROUNDING[rounding])
    return out.astype(np.float32)


def exact_rceil_exponent(amax: np.ndarray, elem_max: float) -> np.ndarray:
    """Smallest integer k with amax <= elem_max * 2^k (float64 compares of exact products), clamped."""
    a = amax.astype(np.float64)
    safe = np.where(a > 0, a, 1.0)
    k = np.floor(np.log2(safe / elem_max))
    for _ in range(2):  # log2 may be off by one either way: fix it with exact comparisons
        k = np.where(safe > elem_max * np.exp2(k), k + 1, k)
        k = np.where(safe <= elem_max * np.exp2(k - 1), k - 1, k)
    return np.clip(np.where(a > 0, k, 0), -127, 127)


def rceil_mx(x: np.ndarray, element: str, B: int, rounding: str = "nearest_even") -> np.ndarray:
    """Rule rceil: s = 2^ceil(log2(amax / max_elem)) exactly; gfloat rounds x / s (saturating)."""
    fi = GFLOAT_ELEMENTS[element]
    ids = block_ids(*x.shape, B)
    amax = block_amax(x.astype(np.float64), ids)
    s = np.exp2(exact_rceil_exponent(amax, fi.max))[ids]
    with np.errstate(invalid="ignore"):
        q = round_ndarray(fi, x.astype(np.float64) / s, GFLOAT_ROUNDING[rounding], sat=True) * s
    return np.where(np.isfinite(amax)[ids], q, np.nan).astype(np.float32)


def _round32(fi, v: np.ndarray) -> np.ndarray:
    """Nearest-even, saturating cast of float32 values into gfloat format `fi`, back as float32."""
    with np.errstate(invalid="ignore"):
        return round_ndarray(fi, v.astype(np.float64), RoundMode.TiesToEven, sat=True).astype(np.float32)


def nvfp4_design(x: np.ndarray, B: int = 16, C: int = 1, elem=format_info_ocp_e2m1, scale=format_info_ocp_e4m3) -> np.ndarray:
    """The NVFP4 formula (Transformer Engine's reference), every operation in numpy float32."""
    x = x.astype(F32)
    ids = block_ids(*x.shape, B, C)
    amax = block_amax(x, ids)
    em, sm = F32(elem.max), F32(scale.max)
    amax_t = amax[np.isfinite(amax)].max(initial=F32(0))
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        S = F32(1) if amax_t == 0 else np.minimum(F32(sm * em) / amax_t, np.finfo(F32).max)
        s_b = _round32(scale, np.minimum(amax * (S * (F32(1) / em)), sm))
        enc = F32(1) / (s_b * (F32(1) / S))
        y = np.where((s_b == 0)[ids], x * F32(0), x * enc[ids])
        q = _round32(elem, y)
        out = (q * s_b[ids]) / S
    return np.where(np.isfinite(amax)[ids], out, np.nan).astype(F32)


def amax_rule(x: np.ndarray, B: int, elem, scale, C: int = 1) -> np.ndarray:
    """Rule amax without a tensor scale: s = Q_scale(amax / max_elem), x_hat = Q_elem(x / s) * s (float32);
    blocks of B along axis 1 times C rows."""
    x = x.astype(F32)
    ids = block_ids(*x.shape, B, C)
    amax = block_amax(x, ids)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        s = _round32(scale, amax / F32(elem.max))
        y = np.where((s == 0)[ids], x * F32(0), x / s[ids])
        out = _round32(elem, y) * s[ids]
    return np.where(np.isfinite(amax)[ids], out, np.nan).astype(F32)


def block_probe_inputs(rows: int, K: int, B: int, seed: int = 0) -> np.ndarray:
    """Rows of blocks over the whole fp32 range plus the corner cases (float32, shape (rows + 8, K)).

    Random rows: normal values times 2^e with e per block in [-150, 126]; then rows whose blocks'
    amax is just below / exactly a power of two, all-zero blocks (signed zeros), a NaN block,
    fp32-subnormal blocks, blocks with one huge outlier, and a row reaching FLT_MAX.
    """
    rng = np.random.default_rng(seed)
    nb = -(-K // B)
    e = rng.integers(-150, 125, (rows, nb)).repeat(B, axis=1)[:, :K]
    x = (rng.standard_normal((rows, K)) * np.exp2(e.astype(np.float64))).astype(F32)
    special = np.empty((8, K), dtype=F32)
    for i, p in enumerate((3, -20, 60)):  # amax just below 2^p in every block, then exactly 2^p
        special[i] = rng.uniform(-1, 1, K) * 2.0**p
        special[i, ::B] = np.nextafter(F32(2.0**p), F32(0)) if i < 2 else F32(2.0**p)
    special[3] = 0.0
    special[3, 1::3] = -0.0
    special[4] = rng.uniform(-1, 1, K).astype(F32)
    special[4, 1] = np.nan
    special[5] = (rng.integers(0, 1 << 23, K, dtype=np.uint32) | (rng.integers(0, 2, K, dtype=np.uint32) << 31)).view(F32)
    special[6] = rng.uniform(-1, 1, K) * 1e-3
    special[6, ::B] = 3e5  # one outlier per block: the rest falls to the element's subnormals / zero
    special[7] = rng.uniform(-1, 1, K) * np.finfo(F32).max
    return np.concatenate([x, special])
