"""Master weights stored in a format (optim.master_format / master_rounding): against torch's own
AdamW in fp32 and torch's own round-to-nearest-even bf16 cast, and stochastic rounding's mean
against the fp32 trajectory."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from helpers import MemoryRecorder
from precisionlab.train.loop import run
from precisionlab.train.optim import MasterFormat, build_optimizer, round_master

BF16_ULP_AT_1 = 2.0**-7  # bf16's spacing in [1, 2): 7 stored mantissa bits


class _Node(dict):
    __getattr__ = dict.__getitem__


def _optim(lr=1e-2, weight_decay=0.1, **master):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 8))
    cfg = _Node(lr=lr, betas=[0.9, 0.95], eps=1e-8, weight_decay=weight_decay, **master)
    return model, build_optimizer(model, cfg), MasterFormat.from_cfg(cfg)


def _is_bf16(t: torch.Tensor) -> bool:
    return torch.equal(t, t.to(torch.bfloat16).float())


def _grads(model, step):
    g = torch.Generator().manual_seed(step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * 10.0 ** (-1 - step % 3)


@pytest.mark.parametrize("rounding", ["nearest_even", "stochastic"])
def test_weights_are_bf16_after_every_update(rounding):
    model, opt, master = _optim(master_format="bf16", master_rounding=rounding)
    fp32_init = [p.detach().clone() for p in model.parameters()]
    round_master(model, master, seed=5, step=0)
    for p, p0 in zip(model.parameters(), fp32_init):  # the initial weights, rounded before step 1
        assert _is_bf16(p)
        if rounding == "nearest_even":
            assert torch.equal(p, p0.to(torch.bfloat16).float())
    for step in range(1, 6):
        _grads(model, step)
        opt.step()
        round_master(model, master, seed=5, step=step)
        assert all(_is_bf16(p) for p in model.parameters())


def test_nearest_even_rounds_the_fp32_adamw_step():
    """Each step from the same weights and moments: our weight is torch's fp32 AdamW result, cast by
    torch to bf16 (round to nearest even)."""
    model, opt, master = _optim(master_format="bf16")
    ref_model, ref_opt, _ = _optim()
    round_master(model, master, seed=0, step=0)
    moved = 0
    for step in range(1, 6):
        ref_model.load_state_dict(model.state_dict())
        ref_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # the reference restarts from our moments
        _grads(model, step)
        _grads(ref_model, step)
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        ref_opt.step()
        round_master(model, master, seed=0, step=step)
        for p, q, p_old in zip(model.parameters(), ref_model.parameters(), before):
            assert torch.equal(p, q.detach().to(torch.bfloat16).float())
            moved += int((p != p_old).sum())
    assert moved > 0


def test_fp32_master_is_untouched():
    model, opt, master = _optim(master_format="fp32", master_rounding="stochastic")
    assert master.format is None
    _grads(model, 1)
    opt.step()
    before = [p.detach().clone() for p in model.parameters()]
    state = torch.get_rng_state()
    round_master(model, master, seed=0, step=1)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert torch.equal(torch.get_rng_state(), state)


def test_stochastic_rounding_of_a_tiny_update_is_unbiased_and_nearest_even_stalls():
    """A constant gradient gives Adam a constant step lr (m_hat / sqrt(v_hat) = 1) of 0.128 bf16 ulps
    on weights at 1.5: nearest even never moves them; stochastic rounding follows the fp32 weights
    on average. Each step's rounding error e_t has mean 0 given the past and |e_t| <= ulp with
    E[e_t^2] <= ulp^2 / 4, so after t steps the mean over n independent weights is off the fp32 value
    by a martingale with standard deviation <= ulp * sqrt(t / (4 n)); we allow 5 of those."""
    n, steps, lr = 4096, 200, 1e-3
    assert lr < BF16_ULP_AT_1 / 2
    runs = {}
    for name, master in (("fp32", {}), ("rne", {"master_format": "bf16"}),
                         ("sr", {"master_format": "bf16", "master_rounding": "stochastic"})):
        weight = torch.nn.Parameter(torch.full((n,), 1.5))
        opt = torch.optim.AdamW([weight], lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
        fmt = MasterFormat.from_cfg(master)
        holder = torch.nn.ParameterList([weight])
        means = []
        for step in range(1, steps + 1):
            weight.grad = torch.ones(n)
            opt.step()
            round_master(holder, fmt, seed=3, step=step)
            means.append(weight.detach().double().mean().item())
            if name == "rne":
                assert torch.equal(weight.detach(), torch.full((n,), 1.5))  # stalled exactly
        runs[name] = means
    fp32 = runs["fp32"]
    assert fp32[-1] == pytest.approx(1.5 - steps * lr, abs=1e-5)  # the fp32 trajectory moves 25.6 ulps
    for t, (sr, ref) in enumerate(zip(runs["sr"], fp32), start=1):
        assert abs(sr - ref) <= 5 * BF16_ULP_AT_1 * math.sqrt(t / (4 * n))


def test_stochastic_draws_are_keyed_by_seed_step_and_parameter():
    """The same (seed, step) rounds the same sum to the same bits; another step or seed to others."""
    def rounded(seed, step):
        holder = torch.nn.ParameterList([torch.nn.Parameter(torch.full((1000,), 1.5 + 2**-10)),
                                         torch.nn.Parameter(torch.full((1000,), 1.5 + 2**-10))])
        round_master(holder, MasterFormat.from_cfg({"master_format": "bf16", "master_rounding": "stochastic"}),
                     seed=seed, step=step)
        return [p.detach() for p in holder]

    a, b = rounded(1, 7), rounded(1, 7)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], a[1])  # each parameter its own draws
    assert not torch.equal(a[0], rounded(1, 8)[0]) and not torch.equal(a[0], rounded(2, 7)[0])


@pytest.mark.parametrize("bad, message", [
    ({"master_format": "bf17"}, r"optim\.master_format: .*bf17"),
    ({"master_format": "mxfp8"}, r"optim\.master_format takes an element format .*'mxfp8'"),
])
def test_bad_master_formats_name_their_key(bad, message):
    with pytest.raises(ValueError, match=message):
        MasterFormat.from_cfg(bad)


def test_training_with_bf16_master_weights(train_cfg, tmp_path, monkeypatch):
    """In the loop: fp32 master weights are the default curve bit for bit (the rounding key is then
    inert); bf16 master weights change the curve and the checkpointed weights are bf16."""
    monkeypatch.chdir(tmp_path)

    def losses(*overrides):
        rec = MemoryRecorder()
        result = run(train_cfg(*overrides), recorder=rec)
        assert result.status == "completed"
        return rec.losses() + rec.losses("val"), result

    default, _ = losses()
    assert losses("optim.master_format=fp32", "optim.master_rounding=stochastic")[0] == default
    bf16, result = losses("optim.master_format=bf16", "optim.master_rounding=stochastic", "train.checkpoint_steps=[10]")
    assert bf16 != default
    weights = torch.load(result.checkpoints[0][1], weights_only=True)["model"]
    assert all(_is_bf16(w) for w in weights.values())  # the parameters (and the tied lm_head.weight)
