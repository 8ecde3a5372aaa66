"""AdamW moments stored in a format (optim.exp_avg_format / exp_avg_sq_format), FP8 weight
gradients (precision.weight_grad) and the MS-AMP presets, against torch's own float8/float16
dtypes with the power-of-two scale written out from its definition."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import compose_train
from precisionlab.config import validate
from precisionlab.quant.linear import QuantLinear
from precisionlab.quant.operands import PrecisionConfig
from precisionlab.train.optim import MomentFormats, build_optimizer, round_moments

MAX = {torch.float8_e4m3fn: 448.0, torch.float16: 65504.0}


def pow2_scaled_cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t cast to `dtype` (round to nearest even) after a scale 2^floor(log2(max / amax)), then unscaled."""
    amax = t.abs().max().item()
    if amax == 0:
        return t.to(dtype).float()
    s = 2.0 ** math.floor(math.log2(MAX[dtype] / amax))
    if MAX[dtype] / amax < s:  # log2 rounding at an exact power of two: the largest s with amax * s <= max
        s /= 2
    return (t * s).to(dtype).float() / s


def _optim(**formats):
    model = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.Linear(16, 8))
    cfg = {"lr": 1e-2, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.1, **formats}
    return model, build_optimizer(model, _Node(cfg)), MomentFormats.from_cfg(cfg)


class _Node(dict):
    __getattr__ = dict.__getitem__


def _grads(model, seed):
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * 10.0 ** (-3 - seed % 3)


def test_moments_are_stored_in_their_formats_after_every_step():
    model, opt, formats = _optim(exp_avg_format="e4m3fn", exp_avg_sq_format="fp16")
    plain_model, plain_opt, _ = _optim()
    plain_model.load_state_dict(model.state_dict())
    for step in range(4):
        _grads(model, step)
        _grads(plain_model, step)
        for p, q in zip(model.parameters(), plain_model.parameters()):  # the plain optimizer restarts from our moments
            if p in opt.state:
                plain_opt.state[q]["exp_avg"].copy_(opt.state[p]["exp_avg"])
                plain_opt.state[q]["exp_avg_sq"].copy_(opt.state[p]["exp_avg_sq"])
        opt.step()
        plain_opt.step()
        round_moments(opt, formats)
        for p, q in zip(model.parameters(), plain_model.parameters()):
            m, v = opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"]
            assert torch.equal(m, pow2_scaled_cast(plain_opt.state[q]["exp_avg"], torch.float8_e4m3fn))
            assert torch.equal(v, pow2_scaled_cast(plain_opt.state[q]["exp_avg_sq"], torch.float16))
            assert v.min() >= 0 and (v > 0).float().mean() > 0.9  # scaled: tiny second moments do not flush
        assert torch.equal(model[0].weight, plain_model[0].weight)  # the update used the fp32 moments


def test_no_formats_no_casts():
    model, opt, formats = _optim()
    assert formats.is_fp32
    _grads(model, 0)
    opt.step()
    before = {k: v.clone() for k, v in opt.state[model[0].weight].items()}
    round_moments(opt, formats)
    assert all(torch.equal(before[k], v) for k, v in opt.state[model[0].weight].items())


def test_state_format_sets_both_moments_and_blocks_cast_along_the_last_axis():
    formats = MomentFormats.from_cfg({"state_format": "mxfp8"})
    assert str(formats.exp_avg) == str(formats.exp_avg_sq) == "mxfp8"
    model, opt, _ = _optim()
    _grads(model, 1)
    opt.step()
    round_moments(opt, formats)
    m = opt.state[model[0].weight]["exp_avg"]
    blocks = m.reshape(16, 1, 32)  # one 32-element block per row: its scale 2^(floor(log2 amax) - 8)
    scale = 2.0 ** (torch.floor(torch.log2(blocks.abs().amax(-1, keepdim=True))) - 8)
    assert torch.equal(((blocks / scale).to(torch.float8_e4m3fn).float() * scale).reshape(16, 32), m)


def test_weight_grad_is_cast_after_its_gemm():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    x, g = torch.randn(4, 10, 64), torch.randn(4, 10, 32) * 1e-4
    grads = []
    for precision in ({"format": "e4m3fn", "grad": "e5m2", "scaling": "tensor"},
                      {"format": "e4m3fn", "grad": "e5m2", "scaling": "tensor", "weight_grad": "e4m3fn"}):
        layer = QuantLinear(linear, PrecisionConfig.from_cfg(precision))
        linear.weight.grad = None
        layer(x).backward(g)
        grads.append(linear.weight.grad.clone())
    plain, cast = grads
    assert not torch.equal(plain, cast)
    assert torch.equal(cast, pow2_scaled_cast(plain, torch.float8_e4m3fn))


def test_msamp_presets():
    o1 = validate(compose_train("precision=msamp_o1"))
    fp8 = validate(compose_train("precision=fp8"))
    o2 = validate(compose_train("precision=msamp_o2"))
    assert (o1.precision.format, o1.precision.grad, o1.precision.scaling, o1.precision.pow2_scale,
            o1.precision.weight_grad) == ("e4m3fn", "e5m2", "tensor", True, "e4m3fn")
    assert {k: v for k, v in o1.precision.items() if k not in ("name", "weight_grad")} == \
           {k: v for k, v in fp8.precision.items() if k not in ("name", "weight_grad")}
    assert o1.optim.exp_avg_format == o1.optim.exp_avg_sq_format == "fp32"
    assert (o2.precision.name, o2.precision.weight_grad) == ("msamp_o2", "e4m3fn")
    assert (o2.optim.exp_avg_format, o2.optim.exp_avg_sq_format) == ("e4m3fn", "fp16")
    assert validate(compose_train("precision=msamp_o2", "optim.exp_avg_format=bf16")).optim.exp_avg_format == "bf16"


@pytest.mark.parametrize("bad", [{"exp_avg_format": "nope"}, {"state_format": "e4m3fn/b16x16"}])
def test_bad_moment_formats_name_their_key(bad):
    with pytest.raises(ValueError, match=r"optim\.exp_avg_format"):
        MomentFormats.from_cfg(bad)
