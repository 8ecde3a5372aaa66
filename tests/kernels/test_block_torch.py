"""The pure-torch block cast (precisionlab.kernels.block_torch), called directly on (rows, K) tensors:
OCP MX blocks, last partial blocks and 2-D blocks against gfloat's block quantization, and the scaled
elements it hands to the element cast against the floor rule written out in numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.block_oracles import block_amax, block_ids, gfloat_mx
from helpers.oracles import assert_same_bits
from precisionlab.kernels.block_torch import block_cast_torch, block_scaled_torch
from precisionlab.numerics.blocks import parse_format
from precisionlab.numerics.cast import block_spec

# (rows, K, B, C): whole blocks, a last partial block along K, partial 2-D blocks along both axes
SHAPES = [(4, 64, 32, 1), (3, 40, 32, 1), (7, 50, 16, 1), (10, 24, 8, 4)]


def _inputs(rows: int, K: int, seed: int) -> np.ndarray:
    """Normal values times a power of two per element: blocks whose amax spans many binades."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, K)) * 2.0 ** rng.integers(-30, 30, (rows, K))).astype(np.float32)


def _name(element: str, B: int, C: int) -> str:
    return f"{element}/b{B}{f'x{C}' if C > 1 else ''}/e8m0"


@pytest.mark.parametrize("element", ["e4m3fn", "e5m2", "e2m1fn"])
@pytest.mark.parametrize("rows, K, B, C", SHAPES)
def test_block_cast_matches_gfloats_mx_partial_blocks_included(element, rows, K, B, C):
    x = _inputs(rows, K, seed=rows * K)
    spec = block_spec(parse_format(_name(element, B, C)), "nearest_even", True, True)
    got = block_cast_torch(torch.from_numpy(x), spec).numpy()
    assert_same_bits(got, gfloat_mx(x, element, B, C=C), x, _name(element, B, C))


@pytest.mark.parametrize("rows, K, B, C", SHAPES)
def test_scaled_elements_are_x_over_the_floor_rules_power_of_two(rows, K, B, C):
    """OCP MX's floor rule: s = 2^(floor(log2 amax) - emax_elem) per block (e4m3fn: emax 8); y = x / s."""
    x = _inputs(rows, K, seed=7 + rows)
    ids = block_ids(rows, K, B, C)
    exponent = np.floor(np.log2(block_amax(x, ids).astype(np.float64))) - 8
    want = (x.astype(np.float64) / 2.0 ** exponent[ids]).astype(np.float32)
    spec = block_spec(parse_format(_name("e4m3fn", B, C)), "nearest_even", True, True)
    got = block_scaled_torch(torch.from_numpy(x), spec).numpy()
    assert_same_bits(got, want, x, f"scaled {_name('e4m3fn', B, C)}")


def test_a_tensor_that_is_not_2d_float32_is_refused():
    spec = block_spec(parse_format("mxfp8"), "nearest_even", True, True)
    for bad in (torch.zeros(2, 2, 32), torch.zeros(2, 32, dtype=torch.float64)):
        with pytest.raises(ValueError, match="2-D float32"):
            block_cast_torch(bad, spec)
