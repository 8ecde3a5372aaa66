"""Number formats and the casts: `FloatFormat` (formats.py), block-scaled `BlockFormat` and the one
name parser `parse_format` (blocks.py), and `quantize` (cast.py), whose Triton kernels and torch twins
live in `precisionlab.kernels`.
"""

from precisionlab.numerics.blocks import NAMED_BLOCK_FORMATS, BlockFormat, parse_format
from precisionlab.numerics.cast import quantize
from precisionlab.numerics.formats import NAMED_FORMATS, FloatFormat

__all__ = ["FloatFormat", "BlockFormat", "parse_format", "quantize", "NAMED_FORMATS", "NAMED_BLOCK_FORMATS"]
