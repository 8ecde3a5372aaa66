"""FloatFormat: parsing, derived properties and value sets against ml_dtypes / torch."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch

from helpers.oracles import ML_DTYPES
from precisionlab import FloatFormat


@pytest.mark.parametrize("name", sorted(ML_DTYPES))
def test_named_formats_match_ml_dtypes(name):
    fmt, dtype = FloatFormat.parse(name), ML_DTYPES[name]
    info = ml_dtypes.finfo(dtype)
    assert fmt.bits == info.bits
    assert fmt.max_finite == float(info.max)
    assert fmt.min_normal == float(info.smallest_normal)
    assert fmt.min_subnormal == float(info.smallest_subnormal)
    codes = np.arange(2**info.bits, dtype=np.uint8).view(dtype).astype(np.float64)
    assert fmt.has_inf == bool(np.isinf(codes).any())
    assert fmt.has_nan == bool(np.isnan(codes).any())
    assert fmt.values() == sorted(set(codes[np.isfinite(codes)].tolist()))
    decoded = np.array([fmt.decode(c) for c in range(2**info.bits)])
    assert np.array_equal(decoded, codes, equal_nan=True)


@pytest.mark.parametrize("name,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_ieee_names_match_torch_finfo(name, dtype):
    fmt, info = FloatFormat.parse(name), torch.finfo(dtype)
    assert (fmt.bits, fmt.max_finite, fmt.min_normal) == (info.bits, info.max, info.tiny)
    assert fmt.min_subnormal == info.smallest_normal * info.eps  # 2^(emin - M)


def test_aliases_one_spelling():
    assert FloatFormat.parse("bf16") == FloatFormat.parse("e8m7")
    with pytest.raises(ValueError, match="unknown format 'BF16'"):  # one spelling per name (issue 17)
        FloatFormat.parse("BF16")
    assert FloatFormat.parse("tf32") == FloatFormat.parse("e8m10")
    assert FloatFormat.parse("fp16") == FloatFormat(5, 10)
    assert str(FloatFormat.parse("e4m3fn")) == "e4m3fn"


def test_qpytorch_style_e4m3_is_expressible():
    """Every exponent code normal, no Inf/NaN: max (1 + 7/8) * 2^8 = 480."""
    fmt = FloatFormat(4, 3, has_inf=False, nan="none")
    assert fmt.max_finite == 480.0
    assert not fmt.has_inf and not fmt.has_nan
    assert len(fmt.values()) == 255  # 256 codes, +0 and -0 coincide
    assert all(math.isfinite(fmt.decode(c)) for c in range(256))


def test_fnuz_has_no_negative_zero_and_larger_bias():
    fmt = FloatFormat.parse("e4m3fnuz")
    assert fmt.bias == 8 and not fmt.has_negative_zero
    assert math.isnan(fmt.decode(0x80))


def test_small_fn_formats_have_no_nan():
    for name in ("e2m1fn", "e2m3fn", "e3m2fn"):
        fmt = FloatFormat.parse(name)
        assert not fmt.has_nan and not fmt.has_inf
        assert all(math.isfinite(fmt.decode(c)) for c in range(2**fmt.bits))


@pytest.mark.parametrize("name", ["e9m3", "e4m", "fp7", "e0m3", "e5m24", "e4m3xx", "", "e8m23fnuz"])
def test_bad_names_say_what_is_accepted(name):
    with pytest.raises(ValueError) as err:
        FloatFormat.parse(name)
    assert "accepted" in str(err.value) or "range" in str(err.value)


def test_bad_explicit_construction():
    with pytest.raises(ValueError, match="exponent bits"):
        FloatFormat(9, 3)
    with pytest.raises(ValueError, match="mantissa bits"):
        FloatFormat(4, -1)
    with pytest.raises(ValueError, match="nan must be"):
        FloatFormat(4, 3, nan="quiet")
    with pytest.raises(ValueError, match="16 bits"):
        FloatFormat.parse("fp32").values()


@pytest.mark.parametrize("name", ["E4M3", " e4m3", "e04m03", "e4m3\u0663", "FP32"])
def test_format_names_have_one_spelling(name):
    with pytest.raises(ValueError, match="accepted: fp32"):
        FloatFormat.parse(name)
