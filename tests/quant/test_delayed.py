"""Delayed scaling (precision.scaling=delayed): the scale follows the amax history, hand-computed
as Transformer Engine's DelayedScaling defines it, and lags the data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from precisionlab import quantize
from precisionlab.quant.linear import QuantLinear
from precisionlab.quant.operands import DelayedScaling, OperandCast
from precisionlab.quant.recipe import PrecisionConfig

AMAXES = [2.0, 4.0, 1.0, 1000.0, 1.0]  # a spike at step 3


def _tensor(amax: float, seed: int) -> torch.Tensor:
    t = torch.rand(64, generator=torch.Generator().manual_seed(seed)) * amax * 0.9
    t[seed % 64] = -amax  # amax exactly
    return t


def _te_scale(history: list[float], previous: float, algo: str, margin: int, pow2: bool) -> float:
    """TE's _default_sf_compute in fp32: (fp8_max / amax) / 2^margin, the previous scale where amax is 0
    or not finite; the power-of-two variant floors log2 first."""
    window = history if algo == "max" else history[:1]
    amax = max(window) if window else 0.0
    if not amax > 0 or not math.isfinite(amax):
        return previous
    if pow2:
        k = math.floor(math.log2(448.0 / amax))
        while amax * 2.0**k > 448.0:
            k -= 1
        return 2.0 ** (k - margin)
    return float(np.float32(np.float32(448.0) / np.float32(amax)) / np.float32(2.0**margin))


@pytest.mark.parametrize("algo", ["max", "most_recent"])
@pytest.mark.parametrize("pow2", [False, True])
@pytest.mark.parametrize("margin", [0, 1])
def test_scale_follows_the_amax_history(algo, pow2, margin):
    cast = OperandCast(PrecisionConfig.from_cfg({"format": "e4m3fn"}).x.fmt, scaling="delayed", pow2_scale=pow2,
                       delayed=DelayedScaling(history_len=3, algo=algo, margin=margin))
    amaxes, scale = torch.zeros(3), torch.ones(1)
    history, previous = [], 1.0
    for step, amax in enumerate(AMAXES):
        t = _tensor(amax, step)
        want_scale = _te_scale(history[:3], previous, algo, margin, pow2)
        got = cast(t, history=(amaxes, scale))
        assert scale.item() == want_scale, f"step {step}"
        s = torch.tensor(want_scale, dtype=torch.float32)
        assert torch.equal(got, quantize(t * s, "e4m3fn") / s), f"step {step}"
        history, previous = [amax] + history, want_scale
        assert amaxes.tolist() == (history + [0.0] * 3)[:3]


def test_a_spike_saturates_or_overflows_because_the_history_lags():
    fmt = PrecisionConfig.from_cfg({"format": "e4m3fn"}).x.fmt
    for saturate in (True, False):
        cast = OperandCast(fmt, saturate=saturate, scaling="delayed", pow2_scale=False,
                           delayed=DelayedScaling(history_len=3, algo="max", margin=0))
        amaxes, scale = torch.zeros(3), torch.ones(1)
        outs = [cast(_tensor(a, i), history=(amaxes, scale)) for i, a in enumerate(AMAXES[:4])]
        spike = outs[3]  # scaled by 448 / 4 from the history, its amax 1000 lands at 112,000 > 448
        if saturate:
            assert spike.abs().max().item() == 448.0 / (448.0 / 4.0) == 4.0  # clipped to the history's amax
        else:
            assert torch.isnan(spike).any()  # e4m3fn has no Inf: overflow is NaN
        # current scaling would have fitted it
        current = OperandCast(fmt, saturate=saturate, scaling="tensor", pow2_scale=False)(_tensor(1000.0, 3))
        assert current.abs().max().item() == pytest.approx(1000.0, rel=2**-4)  # within e4m3 rounding


def test_layer_keeps_one_history_per_operand_and_checkpoints_it():
    torch.manual_seed(0)
    precision = PrecisionConfig.from_cfg({"format": "e4m3fn", "grad": "e5m2", "scaling": "delayed",
                                          "delayed": {"history_len": 4}})
    layer = QuantLinear(torch.nn.Linear(16, 8), precision)
    assert layer.amax_history.shape == (6, 4) and torch.equal(layer.delayed_scale, torch.ones(6))
    x = torch.randn(5, 16, requires_grad=True)
    layer(x).sum().backward()
    rows = {op: layer.amax_history[i, 0].item() for i, op in enumerate(("fwd_x", "fwd_w", "dgrad_g", "dgrad_w", "wgrad_g", "wgrad_x"))}
    assert rows["fwd_x"] == x.abs().max().item() and rows["fwd_w"] == layer.weight.abs().max().item()
    assert rows["dgrad_g"] == 1.0  # d(sum)/dy = 1 everywhere
    assert rows["dgrad_w"] == rows["wgrad_g"] == rows["wgrad_x"] == 0.0  # shared casts: one history per tensor
    state = layer.state_dict()
    assert "amax_history" in state and "delayed_scale" in state
    fresh = QuantLinear(torch.nn.Linear(16, 8), precision)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.amax_history, layer.amax_history)


def test_no_history_without_delayed_scaling():
    layer = QuantLinear(torch.nn.Linear(16, 8), PrecisionConfig.from_cfg({"format": "e4m3fn", "scaling": "tensor"}))
    assert "amax_history" not in layer.state_dict()


@pytest.mark.parametrize("bad, match", [({"history_len": 0}, "history_len"), ({"algo": "mean"}, "algo"),
                                        ({"margin": -1}, "margin"), ({"history_len": 2.5}, "history_len")])
def test_bad_delayed_settings_name_their_key(bad, match):
    with pytest.raises(ValueError, match=rf"precision\.delayed\.{match}"):
        PrecisionConfig.from_cfg({"format": "e4m3fn", "scaling": "delayed", "delayed": bad})


def test_fp32_twin_of_a_delayed_model_leaves_the_histories_behind():
    """`precisionlab sharpness --fp32` on a delayed-scaling checkpoint: the twin takes the weights only."""
    from helpers import compose_train
    from precisionlab.config import validate
    from precisionlab.train.checkpoint import build_model
    from precisionlab.train.sharpness import fp32_twin

    model = build_model(validate(compose_train("precision=fp8_delayed")))
    twin = fp32_twin(model)
    assert not any(isinstance(m, QuantLinear) for m in twin.modules())
    weights = {k: v for k, v in model.state_dict().items() if "amax_history" not in k and "delayed_scale" not in k
               and not k.endswith("_extra_state")}
    assert weights.keys() == twin.state_dict().keys()
    assert all(torch.equal(v, twin.state_dict()[k]) for k, v in weights.items())
