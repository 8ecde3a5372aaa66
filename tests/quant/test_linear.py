"""Quantized linear: GEMMs against explicit references, per-role casts, scaling, the module swap."""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from precisionlab import quantize
from precisionlab.numerics.cast import tensor_scale
from precisionlab.quant.linear import PrecisionConfig, QuantLinear, convert_model
from precisionlab.train.model import LM, ModelConfig


def _linear(in_f=24, out_f=16, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(in_f, out_f)
    nn.init.normal_(lin.bias)
    return lin


def _run(layer, x, g):
    """Output, input gradient, weight gradient and bias gradient of layer(x) with upstream gradient g."""
    x = x.clone().requires_grad_(True)
    y = layer(x)
    y.backward(g)
    return y.detach(), x.grad, layer.weight.grad, layer.bias.grad


def _reference(lin, x, g, fx, fw, fg, **kw):
    """Cast GEMM inputs with `quantize`, multiply in fp32: the three GEMMs written out."""
    cast = lambda t, f: t if f is None else quantize(t, f, **kw)  # noqa: E731
    x_q, w_q, g_q = cast(x, fx), cast(lin.weight.detach(), fw), cast(g, fg)
    y = F.linear(x_q, w_q, lin.bias.detach())
    grad_x = (g_q.reshape(-1, g.shape[-1]) @ w_q).view(x.shape)
    grad_w = g_q.reshape(-1, g.shape[-1]).t() @ x_q.reshape(-1, x.shape[-1])
    return y, grad_x, grad_w, g.reshape(-1, g.shape[-1]).sum(0)


def _quant(lin, **precision):
    return QuantLinear(copy.deepcopy(lin), PrecisionConfig.from_cfg(precision))


def _signed_uniform(shape, gen):
    """Values in ±[1, 2): cast to a 3-bit mantissa they stay there, so fp32 sums of products are exact."""
    mag = 1 + torch.rand(shape, generator=gen)
    return torch.where(torch.rand(shape, generator=gen) < 0.5, -mag, mag)


def test_gemms_equal_an_exact_float64_oracle():
    gen = torch.Generator().manual_seed(1)
    lin = _linear()
    with torch.no_grad():
        lin.weight.copy_(_signed_uniform(lin.weight.shape, gen))
        lin.bias.copy_(torch.round(_signed_uniform(lin.bias.shape, gen) * 8) / 8)  # on the grid: adding it is exact
    x, g = _signed_uniform((3, 5, 24), gen), _signed_uniform((3, 5, 16), gen)
    y, gx, gw, gb = _run(_quant(lin, x="e4m3", w="e4m3", grad="e4m3"), x, g)
    # oracle: numpy float64 on values rounded to 3 mantissa bits (round half to even, as e4m3's nearest_even)
    q = lambda t: np.ldexp(np.round(np.ldexp(t.detach().double().numpy(), 3)), -3)  # |t| in [1, 2]: ulp 2^-3  # noqa: E731
    xq, wq, gq = q(x), q(lin.weight), q(g)
    assert np.abs(xq).min() >= 1 and np.abs(wq).max() <= 2
    assert np.array_equal(y.double().numpy(), xq @ wq.T + lin.bias.detach().double().numpy())
    assert np.array_equal(gx.double().numpy(), gq @ wq)  # products and sums are exact in fp32
    assert np.array_equal(gw.double().numpy(), gq.reshape(-1, 16).T @ xq.reshape(-1, 24))
    np.testing.assert_allclose(gb.double().numpy(), g.double().numpy().reshape(-1, 16).sum(0), atol=15 * 2 * 2**-24)  # bias: uncast g, fp32 sum of 15 terms


@pytest.mark.parametrize("rounding", ["nearest_even", "toward_zero", "nearest_away"])
def test_forward_and_both_backward_gemms_bit_exact(rounding):
    gen = torch.Generator().manual_seed(2)
    lin = _linear()
    x = torch.randn(4, 7, 24, generator=gen) * 3
    g = torch.randn(4, 7, 16, generator=gen) * 1e-3
    got = _run(_quant(lin, x="e4m3fn", w="e3m4", grad="e5m2", rounding=rounding), x, g)
    want = _reference(lin, x, g, "e4m3fn", "e3m4", "e5m2", rounding=rounding)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("role", ["x", "w", "grad"])
def test_each_role_casts_only_its_input(role):
    gen = torch.Generator().manual_seed(3)
    lin = _linear()
    x, g = torch.randn(6, 24, generator=gen), torch.randn(6, 16, generator=gen)
    coarse = "e2m1fn"  # so coarse that any cast changes the result
    got = _run(_quant(lin, **{role: coarse}), x, g)
    want = _reference(lin, x, g, *(coarse if r == role else None for r in ("x", "w", "grad")))
    full = _reference(lin, x, g, None, None, None)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    # which of y = x w^T, grad_x = g w, grad_w = g^T x read the cast input
    reads = {"x": (True, False, True), "w": (True, True, False), "grad": (False, True, True)}[role]
    changed = tuple(not torch.equal(a, b) for a, b in zip(got[:3], full[:3]))
    assert changed == reads


def test_fp32_precision_is_the_unconverted_model(train_cfg):
    torch.manual_seed(0)
    model = LM(ModelConfig(n_layer=2, n_embd=32, n_head=2, block_size=16))
    twin = copy.deepcopy(model)
    convert_model(model, train_cfg("precision=fp32").precision)
    assert not any(isinstance(m, QuantLinear) for m in model.modules())
    idx = torch.randint(0, 256, (2, 16))
    (_, l1), (_, l2) = model(idx, idx), twin(idx, idx)
    l1.backward(), l2.backward()
    assert torch.equal(l1, l2)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p.grad, q.grad)


def test_format_sets_all_roles_and_presets(train_cfg):
    mask = PrecisionConfig.from_cfg(train_cfg("precision=mask", "precision.format=e8m3").precision)
    assert {str(getattr(mask, r).fmt) for r in ("x", "w", "grad")} == {"e8m3"}
    assert mask.x.rounding == "toward_zero" and mask.x.scaling == "none"
    fp8 = PrecisionConfig.from_cfg(train_cfg("precision=fp8").precision)
    assert (str(fp8.x.fmt), str(fp8.w.fmt), str(fp8.grad.fmt)) == ("e4m3fn", "e4m3fn", "e5m2")
    assert fp8.x.scaling == "tensor" and fp8.exclude == ("lm_head",)
    mixed = PrecisionConfig.from_cfg(train_cfg("precision=bf16", "precision.grad=e5m2").precision)
    assert (str(mixed.x.fmt), str(mixed.grad.fmt)) == ("bf16", "e5m2")
    assert PrecisionConfig.from_cfg(train_cfg("precision=bf16", "precision.format=fp32").precision).is_fp32


def test_bad_format_names_the_key():
    with pytest.raises(ValueError, match=r"precision\.format: .*e9m3.*accepted"):
        PrecisionConfig.from_cfg({"format": "e9m3"})
    with pytest.raises(ValueError, match=r"precision\.grad: .*bf17"):
        PrecisionConfig.from_cfg({"format": "e4m3", "grad": "bf17"})


@pytest.mark.parametrize("pow2", [True, False])
def test_tensor_scaling_maps_amax_to_the_format_range(pow2):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(64, 32, generator=gen) * 1e-5  # far below e4m3fn's smallest subnormal (2^-9)
    role = PrecisionConfig.from_cfg({"format": "e4m3fn", "scaling": "tensor", "pow2_scale": pow2}).x
    amax = x.abs().max().item()
    scale = 2.0 ** math.floor(math.log2(448.0 / amax)) if pow2 else np.float32(448.0 / amax).item()
    want = quantize(x * scale, "e4m3fn") / scale
    got = role(x, seed=0)
    assert torch.equal(got, want)
    assert quantize(x, "e4m3fn").abs().max() == 0  # unscaled, everything flushes
    assert torch.count_nonzero(got) == x.numel()
    assert got.abs().max() <= 448.0 / scale * (1 + 1e-6)


def test_scaling_leaves_zero_and_nan_tensors_alone():
    role = PrecisionConfig.from_cfg({"format": "e4m3fn", "scaling": "tensor"}).x
    assert torch.equal(role(torch.zeros(3), seed=0), torch.zeros(3))
    assert torch.isnan(role(torch.tensor([1.0, float("nan")]), seed=0)).any()


def test_exclude_keeps_layers_and_weight_tying():
    model = LM(ModelConfig(n_layer=1, n_embd=32, n_head=2))
    convert_model(model, {"format": "e4m3", "exclude": ["lm_head"]})
    assert type(model.lm_head) is nn.Linear
    assert isinstance(model.blocks[0].attn.c_attn, QuantLinear)
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 4
    model = convert_model(LM(ModelConfig(n_layer=1, n_embd=32, n_head=2)), {"format": "e4m3"})
    assert isinstance(model.lm_head, QuantLinear) and model.lm_head.weight is model.wte.weight


def test_stochastic_rounding_is_seeded_and_advances():
    lin = _linear()
    x = torch.randn(8, 24)

    def outputs(seed):
        layer = QuantLinear(copy.deepcopy(lin), PrecisionConfig.from_cfg({"format": "e3m2", "rounding": "stochastic"}), seed=seed)
        return layer(x).detach(), layer(x).detach()

    a1, a2 = outputs(seed=5)
    b1, b2 = outputs(seed=5)
    c1, _ = outputs(seed=6)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)  # reproducible
    assert not torch.equal(a1, a2)  # each call draws new bits
    assert not torch.equal(a1, c1)  # the run seed matters


@pytest.mark.parametrize("amax", [448.0, 448.0 * 2**-10, 449.0, 447.0, 224.0, 1e-30, 3e38, 2.0**-149])
def test_power_of_two_scale_is_the_largest_that_fits(amax):
    role = PrecisionConfig.from_cfg({"format": "e4m3fn", "scaling": "tensor"}).x
    a = float(np.float32(amax))
    k = math.floor(math.log2(448.0 / a))
    while a * 2.0**k > 448.0:  # exact in float64 for these magnitudes: fix any log2 rounding
        k -= 1
    while a * 2.0 ** (k + 1) <= 448.0:
        k += 1
    scale = tensor_scale(torch.tensor([a, -a / 3]), role.fmt.max_finite).item()
    assert scale == 2.0 ** max(-126, min(126, k))


def test_exclude_matching_no_layer_warns(caplog):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with caplog.at_level(logging.WARNING, logger="precisionlab.quant.linear"):
        convert_model(model, {"format": "e4m3", "exclude": ["lm_haed", "1"]})
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "'lm_haed' matches no linear layer" in warnings[0]
    assert type(model[1]) is nn.Linear and type(model[0]) is not nn.Linear  # "1" did exclude layer 1
