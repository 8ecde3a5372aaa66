"""Binary floating-point formats: `FloatFormat` and the names it parses.

A format is sign + E exponent bits + M mantissa bits plus the conventions that
differ between families (see the README's format table):

  ieee      top exponent code reserved: mantissa 0 is ±Inf, others NaN
  fn        OCP "finite": no Inf; for >= 8-bit formats the all-ones code is
            the single NaN, below 8 bits every code is a finite number
  fnuz      no Inf, no -0: the -0 code is the NaN; bias 2^(E-1)
  explicit  e.g. QPyTorch's "E4M3": every exponent code normal, no Inf/NaN
            (`FloatFormat(4, 3, has_inf=False, nan="none")`, max 480)

Every value of a format must be exactly representable in fp32, because the
cast works on fp32 bit patterns; `FloatFormat` checks that on construction.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["FloatFormat", "NAMED_FORMATS", "FORMAT_NAME_HELP"]

NanEncoding = Literal["ieee", "all_ones", "neg_zero", "none"]

FORMAT_NAME_HELP = (
    "accepted: fp32, tf32, bf16, fp16, or eXmY / eXmYfn / eXmYfnuz "
    "with X (exponent bits) in 1..8 and Y (mantissa bits) in 0..23, e.g. e4m3fn, e5m2, e8m3"
)

_ALIASES = {"fp32": "e8m23", "tf32": "e8m10", "bf16": "e8m7", "fp16": "e5m10"}
# Exactly one spelling per format: lower-case ASCII, no spaces, no leading zeros (e4m3, not E4M3 or e04m03).
_NAME_RE = re.compile(r"e(0|[1-9][0-9]*)m(0|[1-9][0-9]*)(fnuz|fn)?")

FP32_MAX = 3.4028234663852886e38
FP32_MIN_SUBNORMAL = 2.0**-149


@dataclass(frozen=True)
class FloatFormat:
    """A signed binary floating-point format (fake-quantization target)."""

    exp_bits: int  # E: exponent field width, 1..8
    man_bits: int  # M: stored mantissa bits (no implicit bit), 0..23
    bias: int | None = None  # exponent bias; None means the IEEE 2^(E-1) - 1
    has_inf: bool = True  # top exponent code with mantissa 0 is ±Inf
    nan: NanEncoding = "ieee"  # where NaN lives: ieee / all_ones / neg_zero / none
    has_subnormals: bool = True  # exponent code 0 encodes subnormals (else they flush to 0)
    name: str | None = field(default=None, compare=False)  # display name

    def __post_init__(self) -> None:
        if not (isinstance(self.exp_bits, int) and 1 <= self.exp_bits <= 8):
            raise ValueError(f"exponent bits must be in 1..8, got {self.exp_bits!r}")
        if not (isinstance(self.man_bits, int) and 0 <= self.man_bits <= 23):
            raise ValueError(f"mantissa bits must be in 0..23, got {self.man_bits!r}")
        if self.nan not in ("ieee", "all_ones", "neg_zero", "none"):
            raise ValueError(f"nan must be one of ieee, all_ones, neg_zero, none; got {self.nan!r}")
        if self.bias is None:
            object.__setattr__(self, "bias", 2 ** (self.exp_bits - 1) - 1)
        if self.name is None:
            object.__setattr__(self, "name", self._default_name())
        if self._top_normal_exp_code < 1 and not self.has_subnormals:
            raise ValueError(f"{self.name}: a format with no normal exponent code needs subnormals")
        if self.max_finite > FP32_MAX or self.min_subnormal < FP32_MIN_SUBNORMAL:
            raise ValueError(
                f"{self.name}: values must lie within fp32's range "
                f"[2^-149, 3.4e38]; got min {self.min_subnormal!r}, max {self.max_finite!r}"
            )

    # -- construction -----------------------------------------------------

    @classmethod
    def parse(cls, name: str | FloatFormat) -> FloatFormat:
        """Parse `fp32 tf32 bf16 fp16 eXmY eXmYfn eXmYfnuz`, spelled exactly so (lower case, no
        spaces or leading zeros): one name per format, so names in configs and the store compare equal."""
        if isinstance(name, FloatFormat):
            return name
        if not isinstance(name, str):
            raise ValueError(f"format must be a name or FloatFormat, got {type(name).__name__}; {FORMAT_NAME_HELP}")
        key = name
        spelled = _ALIASES.get(key, key)
        match = _NAME_RE.fullmatch(spelled)
        if match is None:
            raise ValueError(f"unknown format {name!r}; {FORMAT_NAME_HELP}")
        e, m, family = int(match[1]), int(match[2]), match[3]
        if not (1 <= e <= 8 and 0 <= m <= 23):
            raise ValueError(f"format {name!r} is out of range; {FORMAT_NAME_HELP}")
        display = key if key in _ALIASES else spelled
        if family is None:
            return cls(e, m, name=display)
        if family == "fn":
            nan = "all_ones" if 1 + e + m >= 8 else "none"
            return cls(e, m, has_inf=False, nan=nan, name=display)
        return cls(e, m, bias=2 ** (e - 1), has_inf=False, nan="neg_zero", name=display)

    def _default_name(self) -> str:
        base = f"e{self.exp_bits}m{self.man_bits}"
        if self.has_inf and self.nan == "ieee" and self.bias == 2 ** (self.exp_bits - 1) - 1:
            return base
        parts = [base, f"bias={self.bias}", f"inf={self.has_inf}", f"nan={self.nan}"]
        return "FloatFormat(" + ", ".join(parts) + ")"

    # -- derived properties ------------------------------------------------

    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def has_nan(self) -> bool:
        if self.nan == "ieee":  # NaN needs a non-zero mantissa under the top exponent code
            return self.man_bits > 0
        return self.nan != "none"

    @property
    def has_negative_zero(self) -> bool:
        return self.nan != "neg_zero"

    @property
    def _top_exp_reserved(self) -> bool:
        return self.has_inf or self.nan == "ieee"

    @property
    def _top_normal_exp_code(self) -> int:
        """Exponent code of the largest finite value (after reserved codes)."""
        top = 2**self.exp_bits - 1 - int(self._top_exp_reserved)
        if self.nan == "all_ones" and not self._top_exp_reserved and self.man_bits == 0:
            top -= 1  # with no mantissa the all-ones NaN takes a whole exponent code
        return top

    @property
    def emin(self) -> int:
        """Unbiased exponent of the smallest normal number."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """Unbiased exponent of the largest finite number."""
        return self._top_normal_exp_code - self.bias

    @property
    def max_finite(self) -> float:
        top_man = 2**self.man_bits - 1
        if self.nan == "all_ones" and not self._top_exp_reserved and self.man_bits > 0:
            top_man -= 1  # the all-ones code is NaN
        code = self._top_normal_exp_code
        if code == 0:  # only subnormals (e.g. e1mY with the top code reserved)
            return math.ldexp(top_man, self.emin - self.man_bits)
        return math.ldexp(2**self.man_bits + top_man, code - self.bias - self.man_bits)

    @property
    def min_normal(self) -> float:
        return math.ldexp(1.0, self.emin)

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value (= min_normal when there are no subnormals)."""
        if self.has_subnormals and self.man_bits > 0:
            return math.ldexp(1.0, self.emin - self.man_bits)
        return self.min_normal

    # -- enumeration ---------------------------------------------------------

    def decode(self, code: int) -> float:
        """Value of a bit pattern (sign | exponent | mantissa), NaN/Inf included."""
        if not 0 <= code < 2**self.bits:
            raise ValueError(f"code {code} out of range for a {self.bits}-bit format")
        sign = -1.0 if code >> (self.bits - 1) else 1.0
        exp_code = (code >> self.man_bits) & (2**self.exp_bits - 1)
        man = code & (2**self.man_bits - 1)
        magnitude_code = code & (2 ** (self.bits - 1) - 1)
        if self.nan == "neg_zero" and code == 2 ** (self.bits - 1):
            return math.nan
        if self.nan == "all_ones" and magnitude_code == 2 ** (self.bits - 1) - 1:
            return math.nan
        if self._top_exp_reserved and exp_code == 2**self.exp_bits - 1:
            return sign * math.inf if man == 0 and self.has_inf else math.nan
        if exp_code == 0:
            if not self.has_subnormals and man != 0:
                return math.nan  # unused code: this format flushes subnormals
            return sign * math.ldexp(man, self.emin - self.man_bits)
        return sign * math.ldexp(2**self.man_bits + man, exp_code - self.bias - self.man_bits)

    def values(self) -> list[float]:
        """All distinct finite values, ascending (formats of at most 16 bits)."""
        if self.bits > 16:
            raise ValueError(f"values() enumerates formats of at most 16 bits; {self.name} has {self.bits}")
        finite = {v for v in map(self.decode, range(2**self.bits)) if math.isfinite(v)}
        return sorted(finite)

    def __str__(self) -> str:
        return self.name


NAMED_FORMATS: tuple[str, ...] = (
    "fp32", "tf32", "bf16", "fp16",
    "e5m2", "e4m3", "e3m4", "e4m3fn", "e4m3fnuz", "e5m2fnuz",
    "e3m2fn", "e2m3fn", "e2m1fn",
    "e8m6", "e8m5", "e8m4", "e8m3", "e7m7",
)
