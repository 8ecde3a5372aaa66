"""Cast attention matmuls (precision.attention): the explicit path against attention written out
here (casts with `quantize` along each GEMM's reduction axis, fp32 matmuls), SDPA untouched when
nothing is cast, seeded stochastic rounding across a resume, the config."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import MICRO
from precisionlab import quantize
from precisionlab.config import ConfigError, validate
from precisionlab.quant.attention import QuantAttend
from precisionlab.quant.linear import convert_model
from precisionlab.quant.operands import AttentionCasts, mix_seed
from precisionlab.quant.recipe import PrecisionConfig
from precisionlab.store import run_id
from precisionlab.train.sharpness import fp32_twin, measure
from precisionlab.train.model import LM, Attend, ModelConfig

CLI = str(Path(sys.executable).with_name("precisionlab"))
B, H, T, D = 2, 3, 40, 48  # blocks of 32 along D and along T end in a partial block


@pytest.fixture(autouse=True)
def eager_casts(monkeypatch):
    monkeypatch.setenv("PRECISIONLAB_COMPILE", "0")  # tiny tensors: never the compiled cast


def _tensors(seed=0):
    """q, k, v (B, H, T, D) with a log-normal spread (blocks along different axes see different
    amaxes) and an upstream gradient dy of another magnitude."""
    gen = torch.Generator().manual_seed(seed)
    spread = lambda: torch.randn(B, H, T, D, generator=gen) * torch.exp(torch.randn(B, H, T, D, generator=gen))  # noqa: E731
    return spread(), spread(), spread(), 1e-3 * spread()


def _run(attend, q, k, v, dy):
    """y, dq, dk, dv of attend(q, k, v) with upstream gradient dy."""
    q, k, v = (t.clone().requires_grad_(True) for t in (q, k, v))
    y = attend(q, k, v)
    y.backward(dy)
    return y.detach(), q.grad, k.grad, v.grad


def _reference(q, k, v, dy, fmts, scaled=False, seeds=None):
    """Causal attention and its backward written out. fmts: tensor (q, k, p, v, grad) -> format; each
    GEMM operand is cast with `quantize` along that GEMM's reduction axis (per-tensor power-of-two
    scale when `scaled`: s = 2^floor(log2(max_finite / amax))), products in fp32. seeds: (tensor,
    what) -> stochastic-rounding seed, one cast per tensor (element formats; v enters y = p . v as
    a linear layer's W = v^T, so the random draws are those of v^T's elements in order). The
    softmax's derivative is torch's (it is no cast GEMM)."""

    def cast(t, tensor, axis, what=None):
        kw = {} if seeds is None else dict(rounding="stochastic", seed=seeds[tensor, what])
        if not scaled:
            return quantize(t, fmts[tensor], axis=axis, **kw)
        max_finite = {"e4m3fn": 448.0, "e3m4": 15.5, "e5m2": 57344.0}[fmts[tensor]]
        s = 2.0 ** math.floor(math.log2(max_finite / t.abs().max().item()))
        return quantize(t * s, fmts[tensor], **kw) / s

    causal = torch.ones(T, T, dtype=torch.bool).tril()
    s_raw = (cast(q, "q", -1) @ cast(k, "k", -1).transpose(-1, -2)).requires_grad_(True)  # (B, H, T, T), over D
    p = torch.softmax((s_raw / math.sqrt(D)).masked_fill(~causal, float("-inf")), dim=-1)
    vt = v.transpose(-1, -2)  # (B, H, D, T)
    y = cast(p.detach(), "p", -1) @ cast(vt, "v", -1).transpose(-1, -2)  # over keys
    dp = cast(dy, "grad", -1, "dy") @ cast(vt, "v", -2)  # over D
    dv = cast(p.detach(), "p", -2).transpose(-1, -2) @ cast(dy, "grad", -2, "dy")  # over queries
    (ds,) = torch.autograd.grad(p, s_raw, dp)  # gradient of the scores GEMM's output
    dq = cast(ds, "grad", -1, "ds") @ cast(k, "k", -2)  # over keys
    dk = cast(ds, "grad", -2, "ds").transpose(-1, -2) @ cast(q, "q", -2)  # over queries
    return y, dq, dk, dv


def _attend(attention: dict, index=0, seed=0, **precision) -> QuantAttend:
    casts = PrecisionConfig.from_cfg({**precision, "attention": attention}).attention
    return QuantAttend(Attend(0.0), casts, index=index, seed=seed)


def test_element_casts_forward_and_backward_equal_the_reference():
    """e4m3fn saturating with per-tensor scaling; keys in e3m4 and the gradients in e5m2 show that
    each operand takes its own tensor's format, the gradients dS and dy the grad format."""
    q, k, v, dy = _tensors(1)
    layer = _attend({"format": "e4m3fn", "k": {"format": "e3m4"}, "grad": {"format": "e5m2"}}, scaling="tensor")
    assert layer.casts.q.saturate and layer.casts.grad.scaling == "tensor"
    got = _run(layer, q, k, v, dy)
    want = _reference(q, k, v, dy, {"q": "e4m3fn", "k": "e3m4", "p": "e4m3fn", "v": "e4m3fn", "grad": "e5m2"}, scaled=True)
    for name, g, w in zip(("y", "dq", "dk", "dv"), got, want):
        assert torch.equal(g, w), name
    unscaled = _run(_attend({"format": "e4m3fn", "k": {"format": "e3m4"}, "grad": {"format": "e5m2"}}), q, k, v, dy)
    assert not torch.equal(unscaled[1], got[1])  # tiny gradients: scaling changes what survives the cast


def test_block_casts_run_along_each_gemms_reduction_axis():
    q, k, v, dy = _tensors(2)
    got = _run(_attend({"format": "mxfp8"}), q, k, v, dy)
    want = _reference(q, k, v, dy, dict.fromkeys(("q", "k", "p", "v", "grad"), "mxfp8"))
    for name, g, w in zip(("y", "dq", "dk", "dv"), got, want):
        assert torch.equal(g, w), name
    for t in (q, k, v, dy):  # a cast along the other axis gives other bits: a wrong axis would show
        assert not torch.equal(quantize(t, "mxfp8", axis=-1), quantize(t, "mxfp8", axis=-2))


def test_stochastic_rounding_seeds_mix_run_seed_block_call_and_slot():
    """Seed of a cast: mix_seed(run seed, block, call, 16 + 6 * GEMM + slot), slots as a linear
    layer's (x 0, W 1, g 2); an element cast serves both GEMMs of its tensor."""
    q, k, v, dy = _tensors(3)
    layer = _attend({"format": "e4m3fn", "grad": {"format": "e5m2"}}, index=1, seed=7, rounding="stochastic")
    fmts = {"q": "e4m3fn", "k": "e4m3fn", "p": "e4m3fn", "v": "e4m3fn", "grad": "e5m2"}
    slots = {("q", None): 16, ("k", None): 17, ("grad", "ds"): 18, ("p", None): 22, ("v", None): 23, ("grad", "dy"): 24}
    for call in range(2):
        seeds = {key: mix_seed(7, 1, call, slot) for key, slot in slots.items()}
        got = _run(layer, q, k, v, dy)
        assert all(torch.equal(g, w) for g, w in zip(got, _reference(q, k, v, dy, fmts, seeds=seeds)))
    assert layer.calls == 2


def test_explicit_path_without_casts_is_sdpa_to_float_tolerance():
    q, k, v, dy = _tensors(4)
    explicit = _run(QuantAttend(Attend(0.0), AttentionCasts()), q, k, v, dy)
    fused = _run(Attend(0.0), q, k, v, dy)
    for g, w in zip(explicit, fused):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5 * w.abs().max().item())


def test_dropout_drops_probabilities_in_training_only():
    q, k, v, _ = _tensors(5)
    layer = QuantAttend(Attend(0.5), AttentionCasts())
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    p = torch.softmax((q @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill(~causal, float("-inf")), dim=-1)
    torch.manual_seed(3)
    want = F.dropout(p, 0.5) @ v
    torch.manual_seed(3)
    assert torch.equal(layer.train()(q, k, v), want)
    assert torch.equal(layer.eval()(q, k, v), p @ v)


class _SDPA(nn.Module):
    """Causal SDPA, called here: what an uncast model's attention must be."""

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("precision", [{}, {"format": "e4m3fn"}, {"format": "mxfp8", "attention": {"format": "fp32"}}])
def test_uncast_attention_is_sdpa_and_leaves_the_model_as_it_was(arch, precision):
    torch.manual_seed(0)
    model = LM(ModelConfig(arch=arch, n_layer=2, n_embd=32, n_head=2, block_size=16))
    keys = set(model.state_dict())
    model = convert_model(model, PrecisionConfig.from_cfg(precision))
    twin = copy.deepcopy(model)
    for block in twin.blocks:
        block.attn.attend = _SDPA()
    assert all(type(block.attn.attend) is Attend for block in model.blocks)
    assert keys <= set(model.state_dict()) and not any("attend" in key for key in model.state_dict())
    idx = torch.randint(0, 256, (2, 16))
    outputs = []
    for m in (model, twin):
        logits, loss = m(idx, idx)
        loss.backward()
        outputs.append([logits.detach(), *(p.grad for p in m.parameters())])
    assert all(torch.equal(a, b) for a, b in zip(*outputs))


def test_convert_model_swaps_every_block_and_resumes_its_draws():
    """Stochastic attention casts: a model rebuilt from a state_dict (call counts in it) draws the
    same bits as the uninterrupted one; a fresh model (count 0) draws others."""
    torch.manual_seed(0)
    base = LM(ModelConfig(n_layer=2, n_embd=32, n_head=2, block_size=16))
    precision = {"attention": {"format": "e4m3fn"}, "rounding": "stochastic"}
    make = lambda: convert_model(copy.deepcopy(base), PrecisionConfig.from_cfg(precision), seed=5)  # noqa: E731
    first = make()
    assert [block.attn.attend.index for block in first.blocks] == [0, 1]
    idx = torch.randint(0, 256, (2, 16))

    def step(model):
        model.zero_grad(set_to_none=True)
        loss = model(idx, idx)[1]
        loss.backward()
        return [loss.detach(), *(p.grad for p in model.parameters())]

    for _ in range(3):
        step(first)
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    assert [block.attn.attend.calls for block in resumed.blocks] == [3, 3]
    fresh = make()
    for _ in range(2):
        a, b, c = step(first), step(resumed), step(fresh)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        assert not torch.equal(a[0], c[0])


def test_sharpness_sees_attention_casts_and_leaves_their_draws():
    """A run that casts only attention is no fp32 run; its fp32 twin attends with SDPA; measuring
    puts the call counts (the training's stochastic-rounding seeds) back."""
    precision = PrecisionConfig.from_cfg({"attention": {"format": "e4m3fn"}, "rounding": "stochastic"})
    assert not precision.is_fp32
    torch.manual_seed(0)
    model = convert_model(LM(ModelConfig(n_layer=2, n_embd=32, n_head=2, block_size=16)), precision, seed=1)
    assert all(type(block.attn.attend) is Attend for block in fp32_twin(model).blocks)
    idx = torch.randint(0, 256, (2, 16))
    model(idx)
    measure(model, (idx, idx), "logit", {"batch_size": 2, "precision": "run", "eps": 1e-3})
    assert [block.attn.attend.calls for block in model.blocks] == [1, 1]


def test_config_follows_the_precision_group_and_keeps_ids(train_cfg):
    cfg = validate(train_cfg("precision=fp8_attention"))
    attention = PrecisionConfig.from_cfg(cfg.precision).attention
    assert (str(attention.q), str(attention.p), str(attention.grad)) == ("e4m3fn", "e4m3fn", "e5m2")
    assert attention.v.scaling == "tensor"  # the precision group's scaling
    with pytest.raises(ValueError, match=r"^precision\.scaling=delayed does not reach the attention casts .*, but "
                       r"attention casts q to e4m3fn; set precision\.attention\.q\.scaling to none or tensor"):
        PrecisionConfig.from_cfg({"scaling": "delayed", "attention": {"format": "e4m3fn"}})
    current = {t: {"scaling": "tensor"} for t in ("q", "k", "p", "v", "grad")}  # what it silently was before
    delayed = PrecisionConfig.from_cfg({"scaling": "delayed", "attention": {"format": "e4m3fn", **current}}).attention
    assert delayed.k.scaling == "tensor"
    assert not PrecisionConfig.from_cfg({"attention": {"grad": {"format": "e5m2"}}}).is_fp32
    plain = validate(train_cfg("precision=fp8"))
    assert run_id(validate(train_cfg("precision=fp8", "precision.attention.format=fp32"))) == run_id(plain)
    mx = run_id(validate(train_cfg("precision.attention.format=mxfp8")))
    assert run_id(validate(train_cfg("precision.attention.format=e4m3fn/b32/e8m0"))) == mx != run_id(plain)
    with pytest.raises(ConfigError, match=r"^precision.attention.q.scaling must be none or tensor"):
        validate(train_cfg("precision.attention.q.scaling=delayed"))


@pytest.mark.parametrize("override, message", [
    ("precision.attention.format=e9m3", "precision.attention.format: format 'e9m3' is out of range"),
    ("precision.attention.grad.rounding=up", "precision.attention.grad.rounding must be one of nearest_even"),
    ("precision.attention=e4m3fn", "precision.attention must be a mapping of format, q, k, p, v, grad; got 'e4m3fn'"),
])
def test_bad_attention_config_is_one_line_and_exit_2(tmp_path, override, message):
    proc = subprocess.run([CLI, "train", *MICRO, override], cwd=tmp_path, capture_output=True, text=True,
                          env=os.environ.copy(), timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "outputs").exists()
