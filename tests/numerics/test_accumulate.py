"""Limited-precision accumulation (precision.accumulate) against a straightforward reference: a
Python loop over K in chunks, float64 sums, gfloat's rounding of each partial sum to the
accumulator format, numpy fp32 additions for the promotion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gfloat import RoundMode, round_float

from precisionlab.numerics.accumulate import Accumulator, accumulate_matmul, parse_accumulator
from precisionlab.quant.linear import QuantLinear
from precisionlab.quant.recipe import PrecisionConfig
from helpers.oracles import ieee_like

GFLOAT_MODE = {"nearest_even": RoundMode.TiesToEven, "nearest_away": RoundMode.TiesToAway,
               "toward_zero": RoundMode.TowardZero}
EXP_MAN = {"e8m13": (8, 13), "bf16": (8, 7), "fp16": (5, 10), "fp32": (8, 23), "e5m4": (5, 4)}


def reference(a: np.ndarray, b: np.ndarray, fmt: str, k: int, promote: int = 0,
              rounding: str = "nearest_even") -> np.ndarray:
    """The module docstring's spec, one output element at a time."""
    fi = ieee_like(*EXP_MAN[fmt])
    M, K = a.shape
    out = np.zeros((M, b.shape[1]), dtype=np.float32)
    for i in range(M):
        for j in range(b.shape[1]):
            acc, total = 0.0, np.float32(0.0)
            for start in range(0, K, k):
                chunk = 0.0
                for t in range(start, min(start + k, K)):
                    chunk += float(a[i, t]) * float(b[t, j])
                acc = round_float(fi, acc + chunk, GFLOAT_MODE[rounding], sat=False)
                end = min(start + k, K)
                if promote and (end % promote == 0 or end == K):
                    total = np.float32(total + np.float32(acc))
                    acc = 0.0
            out[i, j] = total if promote else np.float32(acc)
    return out


def e4m3_values(shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    """Random values exactly representable in e4m3fn (times a power of two): the FP8 GEMM's inputs."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * scale
    return x.to(torch.float8_e4m3fn).float()


def bits(t: torch.Tensor) -> np.ndarray:
    return t.numpy().view(np.uint32)


@pytest.mark.parametrize("fmt", ["e8m13", "bf16", "fp16", "e5m4"])
@pytest.mark.parametrize("k,promote", [(1, 0), (3, 0), (8, 16), (1, 4), (40, 0), (64, 0)])
@pytest.mark.parametrize("rounding", ["nearest_even", "toward_zero", "nearest_away"])
def test_matches_the_reference_bit_for_bit(fmt, k, promote, rounding):
    a, b = e4m3_values((3, 40), 1, 4.0), e4m3_values((40, 5), 2, 2.0)
    acc = Accumulator(parse_accumulator(fmt), k=k, promote=promote, rounding=rounding)
    ours = accumulate_matmul(a, b, acc)
    ref = reference(a.numpy(), b.numpy(), fmt, k, promote, rounding)
    np.testing.assert_array_equal(bits(ours), ref.view(np.uint32))


def test_large_plus_many_small_depends_on_the_rounding_cadence():
    """16384 + 64 ones: at 14 bits (ulp 2 at 2^14) every single addition of 1 is a tie that rounds
    back to 16384 (swamping); one rounding of the exact sum keeps them; fp32 keeps them all."""
    a = torch.tensor([[16384.0] + [1.0] * 64])  # (1, 65)
    b = torch.ones(65, 1)
    expected = {1: 16384.0, 65: 16448.0}  # k=1: swamped; k=K: round(16448) = 16448
    for k in (1, 65):
        acc = Accumulator(parse_accumulator("e8m13"), k=k)
        ours = accumulate_matmul(a, b, acc)
        ref = reference(a.numpy(), b.numpy(), "e8m13", k)
        np.testing.assert_array_equal(bits(ours), ref.view(np.uint32))
        assert ours.item() == expected[k]
    assert (a @ b).item() == 16448.0
    # promotion every 16 elements: partial sums restart at 0, small enough to keep every 1
    promoted = accumulate_matmul(a, b, Accumulator(parse_accumulator("e8m13"), k=1, promote=16))
    assert promoted.item() == reference(a.numpy(), b.numpy(), "e8m13", 1, 16).item()
    assert promoted.item() > 16384.0


def test_overflow_goes_to_inf_like_an_accumulator():
    a = torch.tensor([[60000.0, 60000.0, -60000.0]])
    b = torch.ones(3, 1)
    fp16 = parse_accumulator("fp16")
    assert accumulate_matmul(a, b, Accumulator(fp16, k=1)).item() == math.inf  # 120000 > 65504, then Inf stays
    assert accumulate_matmul(a, b, Accumulator(fp16, k=3)).item() == 60000.0  # one rounding of the exact sum
    assert accumulate_matmul(a, b, Accumulator(fp16, k=1, rounding="toward_zero")).item() == 65504.0 - 60000.0


def test_fp32_accumulator_with_one_rounding_is_the_plain_gemm():
    """Small-integer operands: every fp32 sum is exact, so a@b is the correctly rounded result."""
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-8, 9, (17, 50), generator=g).float()
    b = torch.randint(-8, 9, (50, 9), generator=g).float()
    for k in (50, 1000):
        ours = accumulate_matmul(a, b, Accumulator(parse_accumulator("fp32"), k=k))
        np.testing.assert_array_equal(bits(ours), bits(a @ b))


def _layer(precision: dict, seed: int = 0) -> QuantLinear:
    torch.manual_seed(seed)
    linear = torch.nn.Linear(48, 24)
    with torch.no_grad():  # e2m1fn-representable weights: the fp32 GEMMs below are exact
        linear.weight.copy_(torch.randint(-4, 5, linear.weight.shape).float() / 2)
    return QuantLinear(linear, PrecisionConfig.from_cfg(precision))


def _forward_backward(layer: QuantLinear, x: torch.Tensor, g: torch.Tensor):
    x = x.clone().requires_grad_(True)
    y = layer(x)
    y.backward(g)
    out = (y.detach().clone(), x.grad.clone(), layer.weight.grad.clone())
    layer.weight.grad = None
    layer.bias.grad = None
    return out


def test_layer_with_a_wide_accumulator_reproduces_the_plain_layer():
    """fp32 accumulator, k >= every K: the same bits as the plain layer's fp32 GEMMs (exact here)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-6, 7, (2, 20, 48), generator=g).float() / 2
    grad = torch.randint(-6, 7, (2, 20, 24), generator=g).float() / 4
    base = {"format": "e2m1fn"}
    plain = _forward_backward(_layer(base), x, grad)
    wide = _forward_backward(_layer({**base, "accumulate": {"format": "fp32", "k": 4096}}), x, grad)
    for p, w in zip(plain, wide):
        np.testing.assert_array_equal(bits(p), bits(w))


def test_layer_accumulates_each_chosen_gemm_with_its_operands():
    """gemms picks the GEMMs: forward alone changes y only, wgrad alone changes dW only; and each
    equals the accumulated GEMM of the same cast operands."""
    g = torch.Generator().manual_seed(2)
    x, grad = torch.randn(2, 20, 48, generator=g), torch.randn(2, 20, 24, generator=g)
    base = {"format": "bf16"}
    plain = _forward_backward(_layer(base), x, grad)
    acc = {"format": "bf16", "k": 1}
    fwd = _forward_backward(_layer({**base, "accumulate": {**acc, "gemms": ["fwd"]}}), x, grad)
    wgrad = _forward_backward(_layer({**base, "accumulate": {**acc, "gemms": ["wgrad"]}}), x, grad)
    assert not torch.equal(fwd[0], plain[0]) and torch.equal(fwd[1], plain[1]) and torch.equal(fwd[2], plain[2])
    assert torch.equal(wgrad[0], plain[0]) and torch.equal(wgrad[1], plain[1]) and not torch.equal(wgrad[2], plain[2])
    layer = _layer(base)
    xq, wq = x.to(torch.bfloat16).float().reshape(-1, 48), layer.weight.detach().to(torch.bfloat16).float()
    gq = grad.to(torch.bfloat16).float().reshape(-1, 24)
    expected_y = reference(xq[:5].numpy(), wq.t().numpy(), "bf16", 1) + layer.bias.detach().numpy()
    np.testing.assert_array_equal(fwd[0].reshape(-1, 24)[:5].numpy(), expected_y)
    expected_dw = reference(gq.t().numpy()[:3], xq.numpy(), "bf16", 1)
    np.testing.assert_array_equal(bits(wgrad[2][:3]), expected_dw.view(np.uint32))


@pytest.mark.parametrize("settings,match", [
    ({"format": "fp64"}, r"precision\.accumulate\.format: .*no wider than fp32"),
    ({"format": "e11m52"}, r"precision\.accumulate\.format: .*no wider than fp32"),
    ({"format": "mxfp8"}, r"precision\.accumulate\.format: .*element format"),
    ({"format": "e4m3fn"}, r"precision\.accumulate\.format must have Inf"),
    ({"format": "e8m13", "k": 0}, r"precision\.accumulate\.k must be an integer >= 1"),
    ({"format": "e8m13", "k": 4, "promote": 6}, r"precision\.accumulate\.promote must be .* multiple of k=4"),
    ({"format": "e8m13", "rounding": "stochastic"}, r"precision\.accumulate\.rounding must be one of"),
    ({"format": "e8m13", "gemms": []}, r"precision\.accumulate\.gemms must be a non-empty list"),
])
def test_bad_accumulator_settings_name_their_key(settings, match):
    with pytest.raises(ValueError, match=match):
        PrecisionConfig.from_cfg({"format": "e4m3fn", "accumulate": settings})


def test_accumulation_alone_converts_the_model():
    """fp32 operands with a narrow accumulator still swap the layers (an accumulation-only study)."""
    precision = PrecisionConfig.from_cfg({"accumulate": {"format": "bf16"}})
    assert not precision.is_fp32 and "acc bf16/k1" in precision.casts.describe()
