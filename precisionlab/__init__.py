"""precisionlab: precision-stability sweeps for small language models.

The names below are imported on first use (PEP 562 `__getattr__`): importing the package imports no
torch, so the console script (`precisionlab.console`) starts guarded against Ctrl-C before any heavy
import."""

from __future__ import annotations

import importlib
from importlib import metadata

_EXPORTS = {
    "FloatFormat": "precisionlab.numerics.formats",
    "BlockFormat": "precisionlab.numerics.blocks",
    "parse_format": "precisionlab.numerics.blocks",
    "quantize": "precisionlab.numerics.cast",
    "quantize_scaled": "precisionlab.numerics.cast",
    "tensor_scale": "precisionlab.numerics.cast",
    "ROUNDING_MODES": "precisionlab.numerics.cast",
    "convert_model": "precisionlab.quant.linear",
}

__all__ = ["FloatFormat", "BlockFormat", "parse_format", "quantize", "quantize_scaled", "tensor_scale", "ROUNDING_MODES", "convert_model"]
try:  # one version, pyproject.toml's, as installed; runs record the same (precisionlab.runtime.provenance)
    __version__ = metadata.version("precisionlab")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'precisionlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # once: later lookups find it without this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
