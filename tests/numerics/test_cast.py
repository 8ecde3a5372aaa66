"""`quantize` (torch backend) bit for bit against ml_dtypes, torch dtypes and gfloat."""

from __future__ import annotations

import gfloat
import ml_dtypes
import numpy as np
import pytest
import torch
from gfloat import RoundMode
from gfloat.types import Domain

from helpers.oracles import (
    ML_DTYPES,
    all_bf16_patterns,
    assert_same_bits,
    fnuz,
    ieee_like,
    ocp_finite,
    probe_inputs,
    random_fp32,
)
from precisionlab import FloatFormat, quantize
from precisionlab.kernels.cast_torch import philox_randint


@pytest.fixture(autouse=True)
def eager_twin(monkeypatch):
    """Oracle tests check the eager twin; the compiled copy is checked against it below."""
    monkeypatch.setenv("PRECISIONLAB_COMPILE", "0")


def ours(x: np.ndarray, fmt, **kw) -> np.ndarray:
    return quantize(torch.from_numpy(np.ascontiguousarray(x)), fmt, backend="torch", **kw).numpy()


def ml_codes(dtype) -> np.ndarray:
    bits = ml_dtypes.finfo(dtype).bits
    return np.arange(2**bits, dtype=np.uint8).view(dtype).astype(np.float32)


def ml_inputs(dtype) -> np.ndarray:
    codes = ml_codes(dtype)
    finite = codes[np.isfinite(codes)]
    return np.concatenate([all_bf16_patterns(), probe_inputs(finite), random_fp32(1 << 20)])


# -- named formats against ml_dtypes and torch dtypes -------------------------


@pytest.mark.parametrize("name", sorted(ML_DTYPES))
def test_named_format_matches_ml_dtypes(name):
    dtype = ML_DTYPES[name]
    x = ml_inputs(dtype)
    has_nan = np.isnan(ml_codes(dtype)).any()
    if not has_nan:  # ml_dtypes turns NaN into -0 there; we keep NaN (checked below)
        x = x[~np.isnan(x)]
    ref = x.astype(dtype).astype(np.float32)
    assert_same_bits(ours(x, name, saturate=False), ref, x, name)


@pytest.mark.parametrize("name", ["e2m1fn", "e2m3fn", "e3m2fn", "e4m3fn", "e5m2"])
def test_nan_stays_nan(name):
    x = np.array([np.nan, -np.nan], dtype=np.float32)
    for saturate in (True, False):
        assert np.isnan(ours(x, name, saturate=saturate)).all()


@pytest.mark.parametrize("name,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_fp16_bf16_match_torch_dtypes(name, dtype):
    x = np.concatenate([all_bf16_patterns(), random_fp32(1 << 20, seed=1)])
    x = np.concatenate([x, probe_inputs(np.array(FloatFormat.parse(name).values() if dtype == torch.float16 else [1.0, 2.0, 3.0]))])
    ref = torch.from_numpy(x).to(dtype).float().numpy()
    assert_same_bits(ours(x, name, saturate=False), ref, x, name)


@pytest.mark.parametrize("name,dtype", [("e4m3fn", torch.float8_e4m3fn), ("e5m2", torch.float8_e5m2), ("e4m3fnuz", torch.float8_e4m3fnuz), ("e5m2fnuz", torch.float8_e5m2fnuz)])
def test_fp8_matches_torch_float8(name, dtype):
    x = random_fp32(1 << 18, seed=2)
    x = x[np.isfinite(x) & (np.abs(x) < FloatFormat.parse(name).max_finite)]  # torch's overflow handling is unspecified
    ref = torch.from_numpy(x).to(dtype).float().numpy()
    assert_same_bits(ours(x, name, saturate=False), ref, x, name)


def test_fp32_is_identity_without_saturation():
    x = np.concatenate([random_fp32(1 << 18), all_bf16_patterns()])
    assert_same_bits(ours(x, "fp32", saturate=False), x, x, "fp32")


def test_float64_and_half_inputs_keep_dtype_and_agree():
    x32 = torch.from_numpy(random_fp32(10_000, seed=3)).nan_to_num(0.0, 1e30, -1e30).clamp(-1e4, 1e4).reshape(100, 100)
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        xd = x32.to(dtype)
        q = quantize(xd, "e4m3fn")
        assert q.dtype == dtype and q.shape == xd.shape
        ref = xd.double().numpy().clip(-448, 448).astype(ml_dtypes.float8_e4m3fn).astype(np.float64)
        assert np.array_equal(q.double().numpy(), ref)


# -- saturation ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["e4m3fn", "e5m2", "e3m4", "e2m1fn", "e4m3fnuz"])
def test_saturate_is_clamp_then_round(name):
    dtype = ML_DTYPES[name]
    x = ml_inputs(dtype)
    x = x[~np.isnan(x)]
    fmax = float(ml_dtypes.finfo(dtype).max)
    ref = np.clip(x, -fmax, fmax).astype(dtype).astype(np.float32)
    assert_same_bits(ours(x, name, saturate=True), ref, x, f"{name} saturate")
    assert np.array_equal(ours(np.array([np.inf, -np.inf], np.float32), name), [fmax, -fmax])


# -- arbitrary formats and rounding modes against gfloat ------------------------

GFLOAT_FORMATS = {
    "e2m1": ieee_like(2, 1), "e3m2": ieee_like(3, 2), "e5m3": ieee_like(5, 3), "e6m1": ieee_like(6, 1),
    "e8m3": ieee_like(8, 3), "e8m5": ieee_like(8, 5), "e7m7": ieee_like(7, 7), "e1m6": ieee_like(1, 6),
    "e8m0": ieee_like(8, 0), "e4m0": ieee_like(4, 0), "tf32": ieee_like(8, 10), "e5m10": ieee_like(5, 10),
    "e3m3fn": ocp_finite(3, 3), "e5m2fn": ocp_finite(5, 2), "e5m3fnuz": fnuz(5, 3), "e3m2fnuz": fnuz(3, 2),
}
ROUNDINGS = {"nearest_even": RoundMode.TiesToEven, "nearest_away": RoundMode.TiesToAway, "toward_zero": RoundMode.TowardZero}


def gfloat_values(fi) -> np.ndarray:
    codes = gfloat.decode_ndarray(fi, np.arange(2**fi.k, dtype=np.uint64))
    return codes[np.isfinite(codes)]


def gfloat_inputs(fi) -> np.ndarray:
    x = np.concatenate([probe_inputs(gfloat_values(fi)), random_fp32(1 << 16, seed=fi.k)])
    return x[~np.isnan(x)]


def oracle_can_represent(fi, x, saturate):
    """Where gfloat answers correctly.

    gfloat raises where the format has no value for the result (NaN/Inf/overflow
    without saturation). And for all-subnormal formats (e1mY) gfloat's
    `FormatInfo.max` is not its own largest decoded value (e1m6: 1.984375 vs
    1.96875), so its overflow handling is wrong there: stay within range.
    """
    if fi.max != gfloat_values(fi).max():
        return np.abs(x) <= gfloat_values(fi).max()
    if saturate or fi.domain == Domain.Extended or fi.num_nans > 0:
        return np.ones(x.shape, bool)
    return np.abs(x) <= fi.max


@pytest.mark.parametrize("name", sorted(GFLOAT_FORMATS))
@pytest.mark.parametrize("rounding", sorted(ROUNDINGS))
@pytest.mark.parametrize("saturate", [False, True])
def test_arbitrary_formats_match_gfloat(name, rounding, saturate):
    fi = GFLOAT_FORMATS[name]
    x = gfloat_inputs(fi)
    x = x[oracle_can_represent(fi, x, saturate)]
    ref = gfloat.round_ndarray(fi, x.astype(np.float64), ROUNDINGS[rounding], sat=saturate).astype(np.float32)
    assert_same_bits(ours(x, name, rounding=rounding, saturate=saturate), ref, x, f"{name} {rounding} sat={saturate}")


def test_parsed_ranges_match_gfloat():
    for name, fi in GFLOAT_FORMATS.items():
        f = FloatFormat.parse(name)
        assert (f.max_finite, f.min_subnormal, f.bits) == (gfloat_values(fi).max(), fi.smallest_subnormal, fi.k), name
        if f.bits <= 16:
            assert f.values() == sorted(set(gfloat_values(fi).tolist())), name
        if f.emax >= f.emin:
            assert f.min_normal == fi.smallest_normal, name


@pytest.mark.parametrize("name", ["e8m3", "e5m3fnuz", "e2m1", "e8m0", "e3m3fn"])
@pytest.mark.parametrize("saturate", [False, True])
def test_stochastic_matches_gfloat_given_the_same_random_bits(name, saturate):
    """Our rule: round up iff rand31 < frac31 == gfloat StochasticFastest with srbits = 2^31-1-rand31."""
    fi = GFLOAT_FORMATS[name]
    x = gfloat_inputs(fi)
    x = x[oracle_can_represent(fi, x, saturate)]
    seed = 1234
    rand31 = (philox_randint(seed, torch.arange(x.size)) >> 1).numpy()
    ref = gfloat.round_ndarray(
        fi, x.astype(np.float64), RoundMode.StochasticFastest, sat=saturate, srbits=(2**31 - 1) - rand31, srnumbits=31
    ).astype(np.float32)
    assert_same_bits(ours(x, name, rounding="stochastic", saturate=saturate, seed=seed), ref, x, f"{name} stochastic")


# -- flush to zero --------------------------------------------------------------


@pytest.mark.parametrize("name", ["e4m3fn", "e5m2", "e4m3fnuz", "e2m1fn", "e3m2fn"])
def test_flush_to_zero_flushes_oracle_subnormal_results(name):
    """FTZ = round with subnormals, then a result below min_normal becomes (signed) zero.

    gfloat's has_subnormals=False is not an FTZ oracle: it rounds tiny inputs at
    their own exponent and returns values outside the format, so the oracle is
    ml_dtypes' cast followed by flushing its subnormal results.
    """
    dtype = ML_DTYPES[name]
    x = ml_inputs(dtype)
    x = x[~np.isnan(x)]
    ref = x.astype(dtype).astype(np.float32)
    tiny = np.abs(ref) < ml_dtypes.finfo(dtype).smallest_normal
    ref = np.where(tiny, np.copysign(np.float32(0), ref), ref).astype(np.float32)
    if name.endswith("fnuz"):
        ref = np.where(ref == 0, np.float32(0), ref)
    assert_same_bits(ours(x, name, saturate=False, subnormals=False), ref, x, f"{name} ftz")


def test_flush_to_zero_in_every_rounding_mode_leaves_no_subnormal():
    x = torch.linspace(-0.02, 0.02, 10_001)
    for rounding in ("nearest_even", "nearest_away", "toward_zero", "stochastic"):
        q = quantize(x, "e4m3fn", rounding=rounding, subnormals=False, seed=0).abs()
        assert ((q == 0) | (q >= 2**-6)).all(), rounding
        assert (q[x.abs() >= 2**-6] > 0).all()


# -- stochastic rounding --------------------------------------------------------


def test_stochastic_is_unbiased_and_picks_a_neighbour():
    fmt = FloatFormat.parse("e4m3fn")
    grid = torch.tensor(fmt.values(), dtype=torch.float64)
    rng = np.random.default_rng(5)
    points = torch.tensor(rng.uniform(-400, 400, 12), dtype=torch.float32)
    points = torch.cat([points, torch.tensor([0.3, -1.0 / 3, 2.0**-8 * 1.3, 0.0021], dtype=torch.float32)])
    draws = 20_000
    for value in points:
        x = value.repeat(draws)
        q = quantize(x, fmt, rounding="stochastic", seed=int(1000 * abs(value)) + 1).double()
        lo = grid[grid <= value.double()].max()
        hi = grid[grid >= value.double()].min()
        assert ((q == lo) | (q == hi)).all(), value
        if lo != hi:
            p = (value.double() - lo) / (hi - lo)
            stderr = (hi - lo) * (p * (1 - p) / draws).sqrt()
            assert abs(q.mean() - value.double()) <= 4 * stderr + 1e-12, value


def test_stochastic_reproducible_per_seed():
    x = torch.randn(4096)
    a = quantize(x, "e5m2", rounding="stochastic", seed=7)
    assert torch.equal(a, quantize(x, "e5m2", rounding="stochastic", seed=7))
    assert not torch.equal(a, quantize(x, "e5m2", rounding="stochastic", seed=8))
    torch.manual_seed(3)
    b = quantize(x, "e5m2", rounding="stochastic")
    torch.manual_seed(3)
    assert torch.equal(b, quantize(x, "e5m2", rounding="stochastic"))


def test_exact_values_are_fixed_points_of_every_mode():
    values = torch.tensor(FloatFormat.parse("e3m2fn").values())
    for rounding in ("nearest_even", "nearest_away", "toward_zero", "stochastic"):
        assert torch.equal(quantize(values, "e3m2fn", rounding=rounding, seed=1), values)


# -- bad input ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["e9m3", "e4m", "fp7", "e0m3", "e5m24", "", "e8m23fnuz"])
def test_bad_format_names(name):
    with pytest.raises(ValueError, match="accepted|range"):
        quantize(torch.ones(3), name)


def test_bad_rounding_tensor_backend_seed():
    with pytest.raises(ValueError, match="nearest_even"):
        quantize(torch.ones(3), "e4m3", rounding="nearest")
    with pytest.raises(ValueError, match="float32"):
        quantize(torch.ones(3, dtype=torch.int32), "e4m3")
    with pytest.raises(ValueError, match="Tensor"):
        quantize([1.0], "e4m3")
    with pytest.raises(ValueError, match="accepted"):
        quantize(torch.ones(3), "e4m3", backend="cuda")
    with pytest.raises(ValueError, match="seed"):
        quantize(torch.ones(3), "e4m3", rounding="stochastic", seed=-1)


# -- the torch.compile'd copy used for large CPU tensors ----------------------


@pytest.mark.slow
def test_compiled_twin_is_bit_identical_to_eager(monkeypatch):
    """Each compiled path of `cast_bits` (add and mask: e8m3, bf16; split: e4m3fn, e5m2fnuz, e2m1fn;
    general: e8m0, stochastic) equals the eager twin on every bf16 pattern, the format's codes,
    midpoints +- 1 ulp and specials, and random fp32."""
    base = np.concatenate([all_bf16_patterns(), random_fp32((1 << 20) + 3, seed=9)])
    cases = [("e4m3fn", r, True, True) for r in ("nearest_even", "nearest_away", "toward_zero")]
    cases += [("e5m2fnuz", "nearest_even", False, False), ("e2m1fn", "nearest_even", False, True), ("e8m0", "nearest_even", False, True)]
    cases += [("e8m3", "toward_zero", True, True), ("e8m3", "nearest_even", False, False), ("bf16", "nearest_away", True, True)]
    cases += [("e4m3fn", "stochastic", True, True), ("e2m1fn", "stochastic", False, False)]  # the Philox rounds compiled too
    for name, rounding, saturate, subnormals in cases:
        fmt = FloatFormat.parse(name)
        codes = fmt.values() if fmt.bits <= 16 else [fmt.min_subnormal, fmt.min_normal, 1.0, 1.5, fmt.max_finite]
        x = torch.from_numpy(np.concatenate([base, probe_inputs(np.array(codes, dtype=np.float64))]))
        kw = dict(rounding=rounding, saturate=saturate, subnormals=subnormals, seed=5)
        monkeypatch.setenv("PRECISIONLAB_COMPILE", "0")
        eager = quantize(x, name, **kw)
        monkeypatch.setenv("PRECISIONLAB_COMPILE", "1")
        compiled = quantize(x, name, **kw)
        assert_same_bits(compiled.numpy(), eager.numpy(), x.numpy(), f"compiled {name} {kw}")


def _scaled_inputs():
    """Tensors whose per-tensor scale exercises every branch: ordinary, tiny (subnormal amax), huge,
    an amax on a power of two, all zeros, with NaN, with Inf; each long enough to be compiled."""
    n = 1 << 15
    base = torch.from_numpy(random_fp32(n, seed=3))
    base = torch.where(torch.isfinite(base), base, 0.0)
    yield "random", base
    yield "tiny", torch.randn(n, generator=torch.Generator().manual_seed(1)) * 1e-42  # amax subnormal
    yield "huge", torch.randn(n, generator=torch.Generator().manual_seed(2)) * 1e37
    pow2 = torch.randn(n, generator=torch.Generator().manual_seed(3)).clamp(-0.9, 0.9)
    pow2[7] = -256.0
    yield "amax 2^8", pow2
    yield "zeros", torch.zeros(n)
    for special in (float("nan"), float("inf")):
        t = base.clone()
        t[11] = special
        yield f"with {special}", t


@pytest.mark.slow
def test_compiled_scaled_cast_is_bit_identical_to_eager(monkeypatch):
    """`quantize_scaled` fuses amax, scale, cast and unscale into one compiled graph for large CPU
    tensors: bit for bit the eager composition `quantize(x * s) / s` with s from `tensor_scale`."""
    from precisionlab.numerics.cast import quantize_scaled, tensor_scale

    cases = [("e4m3fn", "nearest_even", True), ("e4m3fn", "nearest_even", False), ("e5m2", "nearest_away", True),
             ("e2m1fn", "toward_zero", True), ("e8m3", "nearest_even", False), ("e4m3fn", "stochastic", True)]
    for label, x in _scaled_inputs():
        for name, rounding, pow2 in cases:
            fmt = FloatFormat.parse(name)
            monkeypatch.setenv("PRECISIONLAB_COMPILE", "0")
            s = tensor_scale(x, fmt.max_finite, pow2)
            eager = quantize(x * s, fmt, rounding=rounding, seed=9) / s
            monkeypatch.setenv("PRECISIONLAB_COMPILE", "1")
            compiled = quantize_scaled(x, fmt, pow2_scale=pow2, rounding=rounding, seed=9)
            assert_same_bits(compiled.numpy(), eager.numpy(), x.numpy(), f"scaled {name} {rounding} pow2={pow2} {label}")


def test_tensor_scaling_takes_element_formats_only():
    from precisionlab.numerics.cast import quantize_scaled

    with pytest.raises(ValueError, match="block scales"):
        quantize_scaled(torch.ones(4), "mxfp8")


@pytest.mark.parametrize("name", ["e8m3", "e8m5", "tf32"])
@pytest.mark.parametrize("rounding", ["nearest_even", "nearest_away", "toward_zero"])
def test_e8_formats_flush_to_zero_after_rounding(name, rounding):
    """E8 formats round fp32 by integer add and mask (`_round_bit_patterns`): with subnormals off,
    gfloat's rounding with subnormals followed by flushing results below 2^-126 (the oracle of
    FTZ, see above), on every bf16 pattern, the probes and random fp32."""
    fi = GFLOAT_FORMATS[name]
    x = gfloat_inputs(fi)
    x = x[~np.isnan(x)]
    ref = gfloat.round_ndarray(fi, x.astype(np.float64), ROUNDINGS[rounding], sat=True).astype(np.float32)
    ref = np.where(np.abs(ref) < 2.0**-126, np.copysign(np.float32(0), ref), ref).astype(np.float32)
    assert_same_bits(ours(x, name, rounding=rounding, saturate=True, subnormals=False), ref, x, f"{name} {rounding} ftz")
