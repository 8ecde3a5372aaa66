"""Random Hadamard transforms: spread outliers along a GEMM's reduction axis before a cast.

Both operands of a GEMM are multiplied along the reduction axis by the same block-diagonal
orthogonal matrix M = diag(M_n, M_n, ...), M_n = diag(signs) . H_n / sqrt(n) (H_n Sylvester's
Hadamard matrix, signs +-1), so (A M)(B M)^T = A B^T in exact arithmetic: the transform changes
only what the casts see. In fp32 it adds rounding of its own (an uncast GEMM with the transform
equals the plain one to a few ulps, not bit for bit). Quartet and NVIDIA's NVFP4 recipe apply
it to the weight-gradient GEMM; Quartet re-draws the signs every call.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["HADAMARD_SIZES", "hadamard_matrix", "random_signs", "hadamard_transform"]

HADAMARD_SIZES = (16, 32, 128)


@functools.lru_cache(maxsize=None)
def _sylvester(n: int) -> torch.Tensor:
    """H_n / sqrt(n) in float64 (entries +-2^-k/2 exactly for even k), n a power of two."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / n**0.5


def hadamard_matrix(n: int, signs: torch.Tensor | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """M_n = diag(signs) . H_n / sqrt(n) as an (n, n) fp32 tensor; signs None: all +1."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard size must be a power of two, got {n}")
    h = _sylvester(n)
    if signs is not None:
        h = signs.to(torch.float64).cpu()[:, None] * h
    return h.to(device=device, dtype=torch.float32)


def random_signs(n: int, seed: int) -> torch.Tensor:
    """n random +-1 values (fp32, CPU) from `seed`: the same seed gives the same signs anywhere."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n,), generator=gen).mul(2).sub(1).float()


def hadamard_transform(t: torch.Tensor, matrix: torch.Tensor, axis: int = -1) -> torch.Tensor:
    """t multiplied along `axis` by the block-diagonal diag(matrix, matrix, ...): each run of n =
    matrix.shape[0] consecutive elements along `axis` becomes (run @ matrix). The axis length must
    be a multiple of n (a ValueError otherwise). Differentiable; fp32 arithmetic."""
    n = matrix.shape[0]
    axis = axis % t.dim()
    size = t.shape[axis]
    if size % n:
        raise ValueError(f"a Hadamard transform of size {n} needs an axis whose length is a multiple of {n}, got {size}")
    matrix = matrix.to(t.dtype)
    if axis == t.dim() - 1:  # runs are rows of a (..., size / n, n) view: one GEMM (strided views are slow)
        return (t.contiguous().reshape(*t.shape[:-1], size // n, n) @ matrix).reshape(t.shape)
    # runs go down the axis: (outer, size / n, n, inner) -> M^T @ each (n, inner) slab, no transposed copy
    outer, inner = t.shape[:axis].numel(), t.shape[axis + 1:].numel()
    return (matrix.t() @ t.reshape(outer, size // n, n, inner)).reshape(t.shape)
