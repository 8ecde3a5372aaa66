"""Number formats and the element cast: `FloatFormat` (formats.py) and `quantize` (cast.py), whose
Triton kernel and torch twin live in the top-level `kernels/` folder (installed as `precisionlab.kernels`).
"""
