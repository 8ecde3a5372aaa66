"""The integer constants that fully describe one cast, shared by both backends."""

from __future__ import annotations

from typing import NamedTuple

ROUNDING_MODES = ("nearest_even", "nearest_away", "toward_zero", "stochastic")
NEAREST_EVEN, NEAREST_AWAY, TOWARD_ZERO, STOCHASTIC = range(4)

# What a finite overflow (or an Inf input) becomes, as fp32 magnitude bits.
FP32_INF_BITS = 0x7F800000
FP32_NAN_BITS = 0x7FC00000


class CastSpec(NamedTuple):
    """Everything the kernels need; hashable so it can key compiled variants."""

    man_bits: int  # M: mantissa bits kept
    emin: int  # unbiased exponent of the smallest normal (1 - bias)
    bias_parity: int  # bias & 1: decides "even" for ties when M == 0 (the code's exponent LSB)
    max_bits: int  # fp32 bits of +max_finite
    min_normal_bits: int  # fp32 bits of +min_normal (flush threshold)
    overflow_bits: int  # fp32 magnitude bits an Inf input becomes (max, Inf or NaN)
    rounding: int  # one of NEAREST_EVEN, NEAREST_AWAY, TOWARD_ZERO, STOCHASTIC
    flush_subnormals: bool  # results below min_normal become signed zero
    no_negative_zero: bool  # fnuz formats: -0 becomes +0

    @property
    def finite_overflow_bits(self) -> int:
        """A finite value beyond max_finite: IEEE round-toward-zero never overflows to Inf."""
        return self.max_bits if self.rounding == TOWARD_ZERO else self.overflow_bits
