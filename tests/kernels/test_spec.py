"""The constants of a cast (precisionlab.kernels.spec): the rounding modes' codes in the order of their
names, fp32's Inf and quiet-NaN bit patterns, and the value a finite overflow becomes."""

from __future__ import annotations

import numpy as np

from precisionlab.kernels import spec


def test_rounding_codes_index_their_names():
    codes = (spec.NEAREST_EVEN, spec.NEAREST_AWAY, spec.TOWARD_ZERO, spec.STOCHASTIC)
    assert [spec.ROUNDING_MODES[code] for code in codes] == ["nearest_even", "nearest_away", "toward_zero", "stochastic"]
    assert [spec.RULES[code] for code in (spec.RULE_FLOOR, spec.RULE_RCEIL, spec.RULE_AMAX)] == ["floor", "rceil", "amax"]


def test_fp32_special_bit_patterns():
    assert int(np.array(np.inf, dtype=np.float32).view(np.uint32)) == spec.FP32_INF_BITS
    nan = np.array([spec.FP32_NAN_BITS], dtype=np.uint32).view(np.float32)[0]
    assert np.isnan(nan) and spec.FP32_NAN_BITS & 0x00400000  # the quiet bit set


def test_a_finite_overflow_rounds_toward_zero_to_max_and_otherwise_to_the_overflow_value():
    """IEEE: round toward zero never overflows to Inf; the other modes give what Inf gives."""
    max_bits, overflow = 0x43E00000, spec.FP32_INF_BITS  # e4m3's 448 (ieee-like), Inf
    make = lambda rounding: spec.CastSpec(3, -6, 1, max_bits, 0x3C800000, overflow, rounding, False, False)  # noqa: E731
    assert make(spec.TOWARD_ZERO).finite_overflow_bits == max_bits
    for rounding in (spec.NEAREST_EVEN, spec.NEAREST_AWAY, spec.STOCHASTIC):
        assert make(rounding).finite_overflow_bits == overflow
