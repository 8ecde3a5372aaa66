"""precisionlab: precision-stability sweeps for small language models."""

from precisionlab.numerics.blocks import BlockFormat, parse_format
from precisionlab.numerics.cast import ROUNDING_MODES, quantize, quantize_scaled, tensor_scale
from precisionlab.numerics.formats import FloatFormat
from precisionlab.quant.linear import convert_model

__all__ = ["FloatFormat", "BlockFormat", "parse_format", "quantize", "quantize_scaled", "tensor_scale", "ROUNDING_MODES", "convert_model"]
__version__ = "0.1.0"
