"""Block-scaled formats: `BlockFormat`, and `parse_format`, the one parser of format names.

A block format is an element format, a block of B consecutive elements along the cast axis
(optionally B x C: C along the other axis of a 2-D tensor), a scale format and a scale rule,
optionally with a second-level fp32 tensor scale (NVFP4's arithmetic). The fake-quantized value
of element x in a block with scale s is Q_elem(x / s) * s (see the README, "Block-scaled formats").

Names (accepted wherever a format name is):

  mxfp8 = mxfp8_e4m3, mxfp8_e5m2, mxfp6 = mxfp6_e2m3, mxfp6_e3m2, mxfp4    OCP MX v1.0 (B 32, E8M0, floor)
  nvfp4                                                                  e2m1fn, B 16, e4m3fn scale, fp32 tensor scale
  ELEMENT/bB[xC]/SCALE[/RULE][/tensor]                                   generic, e.g. e2m1fn/b32/e8m0,
                                                                         e4m3fn/b128/fp32, e2m1fn/b16x16/e4m3fn/tensor

ELEMENT and SCALE are element-format names (`FloatFormat.parse`) or, for SCALE, `e8m0` (the
OCP unsigned power-of-two scale). RULE: `floor` (OCP MX) or `rceil` (Transformer Engine /
torchao MXFP8) with scale e8m0 (default floor); `amax` (s = amax / max_elem rounded into the
scale format) with any other scale (its default). `/tensor` adds the fp32 tensor scale (rule amax).
B and C are powers of two with B * C <= 65536 (every published recipe uses one, and the Triton
kernel's tiles need it). The canonical spelling (a generic format's `name`) omits the default rule.
"""

from __future__ import annotations

import functools

import math
import re
from dataclasses import dataclass, field

from precisionlab.numerics.formats import FORMAT_NAME_HELP, FloatFormat

__all__ = [
    "BlockFormat",
    "parse_format",
    "NAMED_BLOCK_FORMATS",
    "BLOCK_FORMAT_HELP",
    "SCALE_RULES",
    "MAX_BLOCK_ELEMENTS",
]

SCALE_RULES = ("floor", "rceil", "amax")
E8M0 = "e8m0"
MAX_BLOCK_ELEMENTS = 1 << 16  # B * C

NAMED_BLOCK_FORMATS: tuple[str, ...] = (
    "mxfp8", "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4", "nvfp4",
)

# name -> (element, B, C, scale, rule, tensor_scale)
_NAMED = {
    "mxfp8": ("e4m3fn", 32, 1, E8M0, "floor", False),
    "mxfp8_e4m3": ("e4m3fn", 32, 1, E8M0, "floor", False),
    "mxfp8_e5m2": ("e5m2", 32, 1, E8M0, "floor", False),
    "mxfp6": ("e2m3fn", 32, 1, E8M0, "floor", False),
    "mxfp6_e2m3": ("e2m3fn", 32, 1, E8M0, "floor", False),
    "mxfp6_e3m2": ("e3m2fn", 32, 1, E8M0, "floor", False),
    "mxfp4": ("e2m1fn", 32, 1, E8M0, "floor", False),
    "nvfp4": ("e2m1fn", 16, 1, "e4m3fn", "amax", True),
}

BLOCK_FORMAT_HELP = (
    f"block formats: {', '.join(NAMED_BLOCK_FORMATS)}, or ELEMENT/bB[xC]/SCALE[/RULE][/tensor] "
    "with B, C powers of two, SCALE e8m0 (RULE floor or rceil) or an element format name (RULE amax), "
    "e.g. e2m1fn/b32/e8m0, e4m3fn/b128/fp32, e2m1fn/b16x16/e4m3fn/tensor"
)
_BOTH_HELP = f"{FORMAT_NAME_HELP}; {BLOCK_FORMAT_HELP}"
_BLOCK_RE = re.compile(r"b(0|[1-9][0-9]*)(?:x(0|[1-9][0-9]*))?")


def _power_of_two(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 1 and n & (n - 1) == 0


@dataclass(frozen=True)
class BlockFormat:
    """An element format scaled per block of B (x C) elements; see the module docstring."""

    element: FloatFormat  # element format, e.g. e2m1fn
    block: int  # B: elements per block along the cast axis (a power of two)
    block_cols: int = 1  # C: 2-D blocks B x C (C along the other axis of a 2-D tensor); 1 = 1-D blocks
    scale: str = E8M0  # "e8m0" (unsigned power of two, OCP) or a FloatFormat name (e4m3fn, bf16, fp32, ...)
    rule: str = "floor"  # "floor" (OCP MX), "rceil" (TE/torchao MXFP8), "amax" (amax / max_elem in the scale format)
    tensor_scale: bool = False  # second-level fp32 per-tensor scale (NVFP4's arithmetic, generalised)
    name: str | None = field(default=None, compare=False)  # display name ("mxfp4") or the canonical spelling

    def __post_init__(self) -> None:
        if isinstance(self.element, str):
            object.__setattr__(self, "element", FloatFormat.parse(self.element))
        if not isinstance(self.element, FloatFormat):
            raise ValueError(f"block element must be a FloatFormat or its name, got {type(self.element).__name__}")
        for what, n in (("block size B", self.block), ("block columns C", self.block_cols)):
            if not _power_of_two(n):
                raise ValueError(f"{what} must be a power of two >= 1, got {n!r}; {BLOCK_FORMAT_HELP}")
        if self.block * self.block_cols > MAX_BLOCK_ELEMENTS:
            raise ValueError(f"a block holds at most {MAX_BLOCK_ELEMENTS} elements (B x C), got "
                             f"{self.block} x {self.block_cols}")
        if self.scale != E8M0:
            try:
                object.__setattr__(self, "scale", FloatFormat.parse(self.scale).name)
            except ValueError:
                raise ValueError(f"unknown scale format {self.scale!r}; accepted: e8m0 or an element format "
                                 f"name ({FORMAT_NAME_HELP})") from None
        if self.rule not in SCALE_RULES:
            raise ValueError(f"unknown scale rule {self.rule!r}; accepted: floor, rceil (scale e8m0), amax (other scales)")
        if (self.rule == "amax") == (self.scale == E8M0):
            wanted = "floor or rceil" if self.scale == E8M0 else "amax"
            raise ValueError(f"scale rule {self.rule!r} does not go with scale {self.scale}; use rule {wanted} "
                             "(floor/rceil need scale e8m0, amax any other scale format)")
        if self.tensor_scale and self.rule != "amax":
            raise ValueError("a tensor scale (/tensor) needs rule amax and a scale format other than e8m0")
        if self.name is None:
            object.__setattr__(self, "name", self.spelling)

    # -- names -------------------------------------------------------------

    @property
    def spelling(self) -> str:
        """The canonical generic spelling (parses back to an equal format)."""
        block = f"b{self.block}" + (f"x{self.block_cols}" if self.block_cols > 1 else "")
        parts = [self.element.name, block, self.scale]
        if self.rule != _default_rule(self.scale):
            parts.append(self.rule)
        if self.tensor_scale:
            parts.append("tensor")
        return "/".join(parts)

    def __str__(self) -> str:
        return self.name

    # -- derived properties ------------------------------------------------

    @property
    def scale_format(self) -> FloatFormat | None:
        """The scale's FloatFormat; None for e8m0."""
        return None if self.scale == E8M0 else FloatFormat.parse(self.scale)

    @property
    def scale_bits(self) -> int:
        return 8 if self.scale == E8M0 else self.scale_format.bits

    @property
    def bits_per_element(self) -> float:
        """Element bits plus the block scale's bits shared by B x C elements (a tensor scale's 32 bits
        are amortised over the whole tensor and not counted)."""
        return self.element.bits + self.scale_bits / (self.block * self.block_cols)

    @property
    def bits(self) -> float:
        """`bits_per_element`, so element and block formats share a bits axis."""
        return self.bits_per_element

    @property
    def scale_range(self) -> tuple[float, float]:
        """(smallest positive, largest) block scale."""
        if self.scale == E8M0:
            return 2.0**-127, 2.0**127
        s = self.scale_format
        return s.min_subnormal, s.max_finite

    @property
    def max_finite(self) -> float:
        """Largest magnitude a block can hold (before a tensor scale), as a real number: may exceed fp32."""
        return self.element.max_finite * self.scale_range[1]

    @property
    def min_subnormal(self) -> float:
        """Smallest positive magnitude a block can hold (before a tensor scale)."""
        return self.element.min_subnormal * self.scale_range[0]

    def describe(self) -> dict[str, str]:
        """One row of `precisionlab formats` for this format (strings, for printing)."""
        lo, hi = self.min_subnormal, self.max_finite
        return {
            "name": self.name,
            "element": self.element.name,
            "block": f"{self.block}" + (f"x{self.block_cols}" if self.block_cols > 1 else ""),
            "scale": self.scale + (" + fp32 tensor" if self.tensor_scale else ""),
            "rule": self.rule,
            "bits/elem": f"{self.bits_per_element:g}",
            "max": _sci(hi),
            "min_subnormal": _sci(lo),
            "binades": f"{math.log2(hi / lo):.1f}",
        }


def _sci(v: float) -> str:
    """A positive real (possibly beyond a float's range when written as a product) as text."""
    exp = math.floor(math.log10(v))
    return f"{v / 10.0**exp:.3g}e{exp:+03d}" if abs(exp) >= 5 else f"{v:.6g}"


def _default_rule(scale: str) -> str:
    return "floor" if scale == E8M0 else "amax"


def parse_format(name: str | FloatFormat | BlockFormat) -> FloatFormat | BlockFormat:
    """The one parser of format names: element names (`FloatFormat.parse`), the named block formats
    and the generic block grammar. Raises ValueError with a one-line message naming both grammars."""
    if isinstance(name, (FloatFormat, BlockFormat)):
        return name
    if not isinstance(name, str):
        raise ValueError(f"format must be a name, FloatFormat or BlockFormat, got {type(name).__name__}; {_BOTH_HELP}")
    return _parse_name(name)


@functools.lru_cache(maxsize=1024)  # formats are frozen; a training step parses the same few names per cast
def _parse_name(name: str) -> FloatFormat | BlockFormat:
    if name in _NAMED:
        element, b, c, scale, rule, tensor = _NAMED[name]
        return BlockFormat(FloatFormat.parse(element), b, c, scale, rule, tensor, name=name)
    if "/" not in name:
        try:
            return FloatFormat.parse(name)
        except ValueError as err:  # keep FloatFormat's reason ("out of range", "unknown format")
            reason = str(err).split("; accepted", 1)[0]
            raise ValueError(f"{reason}; {_BOTH_HELP}") from None
    return _parse_generic(name)


def _parse_generic(name: str) -> BlockFormat:
    parts = name.split("/")
    if len(parts) < 3:
        raise ValueError(f"block format {name!r} needs ELEMENT/bB[xC]/SCALE; {BLOCK_FORMAT_HELP}")
    element_name, block, scale, *rest = parts
    try:
        element = FloatFormat.parse(element_name)
    except ValueError:
        raise ValueError(f"unknown element format {element_name!r} in {name!r}; {FORMAT_NAME_HELP}") from None
    match = _BLOCK_RE.fullmatch(block)
    if match is None:
        raise ValueError(f"block {block!r} in {name!r} must be bB or bBxC (B, C powers of two, e.g. b32, b16x16); "
                         f"{BLOCK_FORMAT_HELP}")
    b, c = int(match[1]), int(match[2] or 1)
    rule, tensor = _default_rule(scale), False
    if rest and rest[-1] == "tensor":
        tensor, rest = True, rest[:-1]
    if len(rest) == 1:
        rule = rest[0]
    elif rest:
        raise ValueError(f"block format {name!r} has too many parts; {BLOCK_FORMAT_HELP}")
    try:
        return BlockFormat(element, b, c, scale, rule, tensor)
    except ValueError as err:
        raise ValueError(f"block format {name!r}: {err}") from None
