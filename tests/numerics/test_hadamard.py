"""Random Hadamard transforms: the matrix against scipy's, the block-diagonal transform along an
axis against an explicit kron(I, M) product in float64, and the errors of bad sizes."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from precisionlab.numerics.hadamard import HADAMARD_SIZES, hadamard_matrix, hadamard_transform, random_signs


@pytest.mark.parametrize("n", [1, 2, 4, 8, *HADAMARD_SIZES])
def test_matrix_is_scipys_hadamard_over_sqrt_n(n):
    want = scipy.linalg.hadamard(n).astype(np.float64) / np.sqrt(n)
    m = hadamard_matrix(n)
    assert m.dtype == torch.float32 and m.shape == (n, n)
    assert np.array_equal(m.numpy(), want.astype(np.float32))
    signs = random_signs(n, seed=n + 1)
    signed = hadamard_matrix(n, signs)
    assert np.array_equal(signed.numpy(), (signs.double().numpy()[:, None] * want).astype(np.float32))  # diag(s) . H


@pytest.mark.parametrize("n", HADAMARD_SIZES)
def test_matrix_is_orthogonal(n):
    m = hadamard_matrix(n, random_signs(n, seed=3)).double()
    eye = torch.eye(n, dtype=torch.float64)
    # entries +-1/sqrt(n) rounded to fp32 once (exact for n = 16): (1 + d)^2 with |d| <= 2^-24 on the diagonal
    torch.testing.assert_close(m @ m.T, eye, rtol=0, atol=2.0**-22)
    torch.testing.assert_close(m.T @ m, eye, rtol=0, atol=2.0**-22)
    assert torch.equal(m @ m.T, eye) == (n == 16)


def test_random_signs_are_seeded():
    a, b, c = random_signs(128, 7), random_signs(128, 7), random_signs(128, 8)
    assert set(a.tolist()) == {-1.0, 1.0} and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert 32 < (a > 0).sum() < 96  # roughly half of each


def _blockdiag(m: torch.Tensor, blocks: int) -> np.ndarray:
    return np.kron(np.eye(blocks), m.double().numpy())


@pytest.mark.parametrize("n", [16, 32])
@pytest.mark.parametrize("shape, axis", [((5, 64), -1), ((64, 5), 0), ((3, 64, 4), 1), ((2, 3, 32), -1), ((32, 3), -2)])
def test_transform_is_the_block_diagonal_product(n, shape, axis):
    gen = torch.Generator().manual_seed(n)
    t = torch.randn(shape, generator=gen)
    m = hadamard_matrix(n, random_signs(n, seed=9))
    got = hadamard_transform(t, m, axis)
    assert got.shape == t.shape and got.dtype == torch.float32
    # each run of n elements along the axis times M: moved to the last axis, t @ kron(I, M)
    moved = np.moveaxis(t.double().numpy(), axis, -1)
    want = np.moveaxis(moved @ _blockdiag(m, t.shape[axis] // n), -1, axis)
    scale = np.abs(t.double().numpy()).max()
    np.testing.assert_allclose(got.double().numpy(), want, rtol=0, atol=4 * n**0.5 * 2**-24 * scale)
    assert not np.allclose(got.double().numpy(), np.moveaxis(moved @ _blockdiag(m.T, t.shape[axis] // n), -1, axis))
    if t.dim() == 2:  # the same as a matrix product written the other way round along axis 0
        mat = _blockdiag(m, t.shape[axis] // n)
        other = mat.T @ t.double().numpy() if axis in (0, -2) else t.double().numpy() @ mat
        np.testing.assert_allclose(got.double().numpy(), other, rtol=0, atol=4 * n**0.5 * 2**-24 * scale)
    # orthogonal: the transpose undoes it
    back = hadamard_transform(got, m.T.contiguous(), axis)
    torch.testing.assert_close(back, t, rtol=0, atol=8 * n**0.5 * 2**-24 * scale)


def test_transform_is_differentiable():
    m = hadamard_matrix(16, random_signs(16, seed=1)).double()
    t = torch.randn(3, 32, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u: hadamard_transform(u, m, 1), (t,))
    out = hadamard_transform(t, m, 1)
    out.backward(torch.ones_like(out))
    want = torch.ones(3, 32, dtype=torch.float64) @ torch.from_numpy(_blockdiag(m, 2)).T  # d(t M)/dt . 1 = 1 M^T
    torch.testing.assert_close(t.grad, want)


@pytest.mark.parametrize("shape, axis", [((3, 24), -1), ((24, 32), 0), ((2, 40, 16), 1)])
def test_axis_not_a_multiple_is_a_value_error_naming_the_multiple(shape, axis):
    m = hadamard_matrix(16)
    with pytest.raises(ValueError, match=r"multiple of 16, got " + str(shape[axis])):
        hadamard_transform(torch.zeros(shape), m, axis)


@pytest.mark.parametrize("n", [0, 3, 24, -16])
def test_matrix_size_must_be_a_power_of_two(n):
    with pytest.raises(ValueError, match=f"power of two, got {n}"):
        hadamard_matrix(n)
