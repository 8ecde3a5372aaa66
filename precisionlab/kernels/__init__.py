"""Cast kernels: a Triton kernel for CUDA tensors and its pure-torch twin.

Both compute the same fp32 bit arithmetic; `precisionlab.quantize` picks one.
"""
