"""precisionlab: precision-stability sweeps for small language models.

The names below are imported on first use (PEP 562 `__getattr__`): importing the package imports no
torch, so the console script (`precisionlab.console`) starts guarded against Ctrl-C before any heavy
import."""

from __future__ import annotations

from importlib import metadata

from precisionlab.runtime import lazy_exports

_EXPORTS = {
    "FloatFormat": "precisionlab.numerics.formats",
    "BlockFormat": "precisionlab.numerics.blocks",
    "parse_format": "precisionlab.numerics.blocks",
    "quantize": "precisionlab.numerics.cast",
    "quantize_scaled": "precisionlab.numerics.cast",
    "tensor_scale": "precisionlab.numerics.cast",
    "ROUNDING_MODES": "precisionlab.numerics.cast",
    "convert_model": "precisionlab.run.convert",  # resolves preset names, then the quant layer's module swap
    "presets": "precisionlab.run.convert",
    "track": "precisionlab.run.track",
}

__all__ = ["FloatFormat", "BlockFormat", "parse_format", "quantize", "quantize_scaled", "tensor_scale", "ROUNDING_MODES", "convert_model",
           "presets", "track"]
try:  # one version, pyproject.toml's, as installed; runs record the same (precisionlab.runtime.provenance)
    __version__ = metadata.version("precisionlab")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
