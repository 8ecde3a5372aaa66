"""Block casts against torchao's pure-torch references (torchao 0.18, the optional `torchao` extra;
skipped when it is not installed): to_mx (FLOOR, RCEIL) and nvfp4_quantize, bit for bit where the
arithmetic is the same, and one test per documented difference (precisionlab/kernels/block_torch.py's docstring)."""

from __future__ import annotations

import warnings

import pytest
import torch

from precisionlab import quantize

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    pytest.importorskip("torchao", minversion="0.18")
    from torchao.prototype.mx_formats.config import ScaleCalculationMode
    from torchao.prototype.mx_formats.constants import DTYPE_FP6_E2M3, DTYPE_FP6_E3M2
    from torchao.prototype.mx_formats.kernels import f4_unpacked_to_f32, unpack_uint4
    from torchao.prototype.mx_formats.mx_tensor import to_dtype, to_mx
    from torchao.prototype.mx_formats.nvfp4_tensor import (
        nvfp4_quantize,
        per_tensor_amax_to_scale,
    )

FLOOR, RCEIL = ScaleCalculationMode.FLOOR, ScaleCalculationMode.RCEIL
# our MX name -> (torchao element dtype, our element name)
MX = {
    "mxfp8_e4m3": (torch.float8_e4m3fn, "e4m3fn"),
    "mxfp8_e5m2": (torch.float8_e5m2, "e5m2"),
    "mxfp6_e2m3": (DTYPE_FP6_E2M3, "e2m3fn"),
    "mxfp6_e3m2": (DTYPE_FP6_E3M2, "e3m2fn"),
    "mxfp4": (torch.float4_e2m1fn_x2, "e2m1fn"),
}


@pytest.fixture(autouse=True)
def eager_twin(monkeypatch):
    monkeypatch.setenv("PRECISIONLAB_COMPILE", "0")


def ours(x: torch.Tensor, name: str, mode=FLOOR) -> torch.Tensor:
    return quantize(x, name if mode == FLOOR else f"{MX[name][1]}/b32/e8m0/rceil")


def tao_mx(x: torch.Tensor, name: str, mode=FLOOR) -> torch.Tensor:
    scale, data = to_mx(x, MX[name][0], 32, mode)
    return to_dtype(data, scale, MX[name][0], 32, torch.float32)


def tao_nvfp4_codes(x: torch.Tensor):
    """torchao's NVFP4 (two-level): e2m1 codes as fp32 (rows, blocks, 16), e4m3 block scales as fp32, and pts."""
    pts = per_tensor_amax_to_scale(x.abs().amax())
    scale, data = nvfp4_quantize(x, 16, pts)
    q = f4_unpacked_to_f32(unpack_uint4(data)).view(x.shape[0], -1, 16)
    return q, scale.to(torch.float32).unsqueeze(-1), pts


def same_bits(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.view(torch.int32) == b.view(torch.int32)) | (a.isnan() & b.isnan())


def wide_range(rows=64, cols=256, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * torch.exp2(torch.randint(-100, 100, (rows, 1), generator=g).float())


@pytest.mark.parametrize("name", sorted(MX))
@pytest.mark.parametrize("mode", [FLOOR, RCEIL], ids=["floor", "rceil"])
def test_to_mx_matches_bit_for_bit(name, mode):
    x = wide_range()
    x[5, :32] = 0.0
    x[6, ::32] = torch.tensor(448.0 * 2.0**-3).nextafter(torch.tensor(0.0))  # amax just below a power of two times max
    x[7, 32:64] = float("nan")
    assert same_bits(ours(x, name, mode), tao_mx(x, name, mode)).all()


def test_to_mx_floor_difference_scale_below_fp32_normal():
    """Our E8M0 scale reaches 2^-127; torchao clamps it to 2^-126 (fp32's smallest normal)."""
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 1] = 2.0**-127, 2.0**-128  # floor: s = 2^(-127 - 2) -> clamped to 2^-127
    assert ours(x, "mxfp4")[0, 1].item() == 2.0**-128  # 2^-128 / 2^-127 = 0.5, an e2m1 code
    assert tao_mx(x, "mxfp4")[0, 1].item() == 0.0  # 2^-128 / 2^-126 = 0.25: ties to even -> 0


def test_to_mx_difference_inf_block():
    """A block holding Inf is NaN here (E8M0's NaN scale); torchao saturates it."""
    x = torch.ones(1, 32)
    x[0, 3] = float("inf")
    assert ours(x, "mxfp8_e4m3").isnan().all() and ours(x, "mxfp8_e4m3", RCEIL).isnan().all()
    assert not tao_mx(x, "mxfp8_e4m3").isnan().any() and not tao_mx(x, "mxfp8_e4m3", RCEIL).isnan().any()


def test_to_mx_rceil_difference_float_log2():
    """torchao takes ceil(log2(amax / max_pos)) in fp32: when amax / 448 is one ulp above 2^4, log2 rounds to
    exactly 4, so its scale is 2^4 and the amax clips to 448 * 2^4; the exact ceil is 5 (nothing clips).
    The smaller elements then land on different codes: 2^-5 is e4m3fn's 2^-9 * 2^4, but 2^-10 * 2^5 -> 0."""
    amax = torch.tensor(448.0 * 16).nextafter(torch.tensor(1e9))
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 1] = amax, 2.0**-5
    mine, theirs = ours(x, "mxfp8_e4m3", RCEIL), tao_mx(x, "mxfp8_e4m3", RCEIL)
    assert mine[0, 0].item() == 448.0 * 16 and theirs[0, 0].item() == 448.0 * 16
    assert mine[0, 1].item() == 0.0 and theirs[0, 1].item() == 2.0**-5


def test_nvfp4_codes_match_and_decode_differs_by_one_ulp():
    """On ordinary tensors torchao's codes and block scales are ours: decoded with Transformer
    Engine's arithmetic (q * s_b) / S they give our bits exactly. torchao's own decode q * (pts * s_b)
    rounds differently: up to 1 ulp off in a fraction of the elements."""
    g = torch.Generator().manual_seed(1)
    y = torch.randn(64, 256, generator=g)
    q, s_b, _ = tao_nvfp4_codes(y)
    S = torch.tensor(448.0 * 6) / y.abs().amax()
    te_decode = ((q * s_b) / S).view(y.shape)
    mine = quantize(y, "nvfp4")
    assert same_bits(mine, te_decode).all()
    _, _, pts = tao_nvfp4_codes(y)
    tao_decode = (q * (pts * s_b)).view(y.shape)
    off = ~same_bits(mine, tao_decode)
    assert off.any()  # documented: different rounding order of the same product
    assert (mine[off].view(torch.int32) - tao_decode[off].view(torch.int32)).abs().max().item() == 1


def test_nvfp4_single_level_matches_amax_rule():
    """torchao without a tensor scale = our e2m1fn/b16/e4m3fn (rule amax) on ordinary data."""
    g = torch.Generator().manual_seed(2)
    y = torch.randn(32, 128, generator=g)
    scale, data = nvfp4_quantize(y, 16, None)
    q = f4_unpacked_to_f32(unpack_uint4(data)).view(32, -1, 16)
    assert same_bits(quantize(y, "e2m1fn/b16/e4m3fn"), (q * scale.float().unsqueeze(-1)).view(y.shape)).all()


def test_nvfp4_difference_tiny_block_scale():
    """TE's block scale may round to 0 in e4m3fn (the block decodes to 0); torchao clamps it to 2^-6."""
    x = torch.full((1, 32), 1e-6)
    x[0, :16] = 1e4
    q, s_b, pts = tao_nvfp4_codes(x)
    assert (quantize(x, "nvfp4")[0, 16:] == 0).all()
    assert s_b[0, 1].item() == 2.0**-6 and (q[0, 1] * (pts * s_b[0, 1]) == 0).all()  # codes round to 0 here ...
    x[0, 16:] = 2e-2  # ... but a block of 2e-2 keeps values in torchao (scale 2^-6) and not in TE's arithmetic
    q, s_b, pts = tao_nvfp4_codes(x)
    assert (quantize(x, "nvfp4")[0, 16:] == 0).all() and (q[0, 1] * (pts * s_b[0, 1]) != 0).all()
