"""precisionlab: precision-stability sweeps for small language models."""

from precisionlab.cast import ROUNDING_MODES, quantize
from precisionlab.formats import FloatFormat

__all__ = ["FloatFormat", "quantize", "ROUNDING_MODES"]
__version__ = "0.1.0"
