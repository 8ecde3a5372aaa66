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


# Block scale rules (BlockSpec.rule) and scale kinds (BlockSpec.scale_kind).
RULES = ("floor", "rceil", "amax")
RULE_FLOOR, RULE_RCEIL, RULE_AMAX = range(3)
SCALE_E8M0, SCALE_FLOAT = range(2)


class BlockSpec(NamedTuple):
    """Everything a block cast needs (the arithmetic: precisionlab/kernels/block_torch.py's docstring); hashable, ints/bools and CastSpecs only.

    The scaled element x / s is cast with `elem`; the scale s comes from the block's amax per `rule`.
    """

    elem: CastSpec  # the element cast (rounding, saturate, subnormals of the user's call)
    elem_emax: int  # unbiased exponent of the element format's largest normal (rule floor: s = 2^(floor(log2 amax) - elem_emax))
    block: int  # B: elements per block along the cast axis (a power of two)
    block_cols: int  # C: rows of the other axis per block (2-D blocks B x C); 1 = 1-D blocks
    rule: int  # RULE_FLOOR, RULE_RCEIL (both with SCALE_E8M0) or RULE_AMAX (with SCALE_FLOAT)
    scale_kind: int  # SCALE_E8M0 (power of two, exponent clamped to [-127, 127]) or SCALE_FLOAT
    scale: CastSpec | None  # SCALE_FLOAT: the scale's cast (nearest even, saturating, subnormals kept); None for E8M0
    tensor_scale: bool  # second-level fp32 tensor scale S (NVFP4 arithmetic); only with RULE_AMAX
