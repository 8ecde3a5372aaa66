"""transformers' Conv1D (GPT-2's projections, weight (in, out), y = x . W + b) under convert_model: its
three GEMMs against a reference written out here in Conv1D's own layout with `quantize(..., axis=...)`,
against an nn.Linear holding W^T, and the module swap on a GPT-2 (Parameters, ties, exclude and keep
on HF names, seeds, delayed scaling, Hadamard checks, cast sites); and a model nothing can cast."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from helpers import layer_grads
from helpers.extras import require
from precisionlab import quantize
from precisionlab.quant.linear import QuantConv1D, QuantLinear, check_hadamard_dims, convert_model
from precisionlab.quant.operands import OPERANDS, observing_casts
from precisionlab.quant.recipe import PrecisionConfig

IN, OUT = 40, 24  # 40 and 24 features, 21 tokens: a partial last block on every axis of 16- and 32-blocks


@pytest.fixture(autouse=True)
def tiny(monkeypatch):
    monkeypatch.setenv("PRECISIONLAB_COMPILE", "0")  # tiny tensors: never the compiled cast


def _conv1d(seed=0, in_f=IN, out_f=OUT):
    transformers = require("transformers")
    torch.manual_seed(seed)
    conv = transformers.pytorch_utils.Conv1D(out_f, in_f)  # nf (out), nx (in)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # heavy-tailed weights: blocks along in and along out see different amaxes
        conv.weight.copy_(torch.randn(in_f, out_f, generator=gen) * torch.exp(1.5 * torch.randn(in_f, out_f, generator=gen)))
        conv.bias.copy_(torch.randn(out_f, generator=gen))
    return conv


def _inputs(seed=1, batch=3, seq=7, in_f=IN, out_f=OUT):
    gen = torch.Generator().manual_seed(seed)
    heavy = lambda *shape: torch.randn(*shape, generator=gen) * torch.exp(torch.randn(*shape, generator=gen))  # noqa: E731
    return heavy(batch, seq, in_f), 1e-3 * heavy(batch, seq, out_f)


def _reference(conv, x, g, fmts):
    """Conv1D's GEMMs written out, W (in, out): y = x . W + b, dx = g . W^T, dW = x^T . g. fmts: operand
    -> format; each operand is cast with `quantize` along its GEMM's reduction axis (fwd: in, dgrad: out,
    wgrad: tokens); a cast down the columns of a 2-D tensor is written as a cast along the rows of its
    transpose, so the reference relies on no axis handling. Products in fp32."""
    w, b = conv.weight.detach(), conv.bias.detach()  # (in, out), (out,)
    x2, g2 = x.reshape(-1, IN), g.reshape(-1, OUT)  # (N, in), (N, out)

    def rows(t, op):  # along the last axis
        return t if op not in fmts else quantize(t, fmts[op], axis=-1)

    def columns(t, op):  # along the first axis of a 2-D tensor
        return rows(t.t().contiguous(), op).t()

    y = torch.addmm(b, rows(x2, "fwd_x"), columns(w, "fwd_w")).view(*x.shape[:-1], OUT)  # reduction over in
    dx = (rows(g2, "dgrad_g") @ rows(w, "dgrad_w").t()).view(x.shape)  # over out
    dw = (columns(g2, "wgrad_g").t() @ columns(x2, "wgrad_x")).t()  # dW^T = g^T . x, over tokens
    return y, dx, dw, g2.sum(0)


FORMATS = {  # precision node -> each operand's format
    "element": ({"x": "e4m3fn", "w": "e3m4", "grad": "e5m2"},
                {"fwd_x": "e4m3fn", "wgrad_x": "e4m3fn", "fwd_w": "e3m4", "dgrad_w": "e3m4", "dgrad_g": "e5m2",
                 "wgrad_g": "e5m2"}),
    "mxfp8": ({"format": "mxfp8"}, dict.fromkeys(OPERANDS, "mxfp8")),
    "mxfp4": ({"format": "mxfp4"}, dict.fromkeys(OPERANDS, "mxfp4")),
    "nvfp4": ({"format": "nvfp4"}, dict.fromkeys(OPERANDS, "nvfp4")),
}


@pytest.mark.parametrize("setting", FORMATS.values(), ids=FORMATS.keys())
def test_conv1d_gemms_cast_along_each_reduction_axis_bit_for_bit(setting):
    cfg, fmts = setting
    conv = _conv1d()
    x, g = _inputs()
    layer = QuantConv1D(copy.deepcopy(conv), PrecisionConfig.from_cfg(cfg))
    got = layer_grads(layer, x, g)
    want = _reference(conv, x, g, fmts)
    for name, a, b in zip(("y", "dx", "dW", "db"), got, want):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)
    uncast = _reference(conv, x, g, {})
    for name, a, b in zip(("y", "dx", "dW"), got, uncast):
        assert not torch.equal(a, b), f"{name}: the casts must change something"
    if fmts["fwd_w"] != "e3m4":  # W's blocks along out instead of in give other bits: a wrong axis would show
        x_q = quantize(x.reshape(-1, IN), fmts["fwd_x"], axis=-1)
        w_wrong = quantize(conv.weight.detach(), fmts["fwd_w"], axis=-1)
        assert not torch.equal(torch.addmm(conv.bias.detach(), x_q, w_wrong).view_as(got[0]), got[0])


@pytest.mark.parametrize("cfg", [
    {"x": "e4m3fn", "w": "e4m3fn", "grad": "e5m2", "scaling": "tensor"},
    {"format": "mxfp8", "rounding": "stochastic"},
    {"format": "nvfp4", "hadamard": {"size": 16, "gemms": ["fwd", "dgrad", "wgrad"], "signs": "per_call"}},
    {"format": "e4m3fn", "scaling": "delayed", "delayed": {"history_len": 4}, "weight_grad": "e5m2"},
    {"format": "mxfp8", "accumulate": {"format": "bf16", "gemms": ["fwd", "dgrad"]}},
], ids=["tensor-scaled", "stochastic", "hadamard", "delayed", "accumulate"])
def test_conv1d_is_a_linear_holding_the_transposed_weight(cfg):
    """Same recipe, seed and layer index: a converted Conv1D gives an nn.Linear's (weight W^T) bits,
    output and gradients, over several calls (stochastic draws, per-call signs, amax histories)."""
    in_f, out_f = 32, 48  # and 16 tokens: multiples of the Hadamard size
    conv = _conv1d(3, in_f, out_f)
    linear = nn.Linear(in_f, out_f)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.t())
        linear.bias.copy_(conv.bias)
    precision = PrecisionConfig.from_cfg(cfg)
    a = QuantConv1D(copy.deepcopy(conv), precision, index=2, seed=9, name="c")
    b = QuantLinear(linear, precision, index=2, seed=9, name="c")
    for call in range(3):
        x, g = _inputs(10 + call, 2, 8, in_f, out_f)
        got, want = layer_grads(a, x, g), layer_grads(b, x, g)
        for name, u, v in zip(("y", "dx", "dW", "db"), got, want):
            torch.testing.assert_close(u, v.t() if name == "dW" else v, atol=0, rtol=0, msg=f"call {call}: {name}")
    assert a.calls == b.calls == 3
    mine, theirs = a.state_dict(), b.state_dict()  # call counts, amax histories and scales: the same
    assert mine.keys() == theirs.keys() and mine["_extra_state"] == theirs["_extra_state"] == {"calls": 3}
    for key in mine.keys() - {"_extra_state"}:
        assert torch.equal(mine[key], theirs[key].t() if key == "weight" else theirs[key]), key


def _gpt2(**kw):
    transformers = require("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=64, n_positions=16,
                                     bos_token_id=0, eos_token_id=0, **kw)
    return transformers.GPT2LMHeadModel(config)


def test_convert_model_swaps_gpt2s_conv1d_keeping_parameters_ties_and_seeds():
    model = _gpt2()
    params = dict(model.named_parameters(remove_duplicate=False))
    convert_model(model, {"format": "e4m3fn", "rounding": "stochastic"}, seed=4)
    block = model.transformer.h[1]
    assert all(isinstance(m, QuantConv1D) for m in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj))
    assert isinstance(model.lm_head, QuantLinear)
    now = dict(model.named_parameters(remove_duplicate=False))
    assert now.keys() == params.keys() and all(now[k] is params[k] for k in params)  # the same Parameter objects
    assert model.lm_head.weight is model.transformer.wte.weight  # the tie survives
    casts = [(name, m) for name, m in model.named_modules() if isinstance(m, (QuantConv1D, QuantLinear))]
    assert [m.index for _, m in casts] == list(range(9))  # 4 Conv1D per block, then lm_head: one count
    assert all(m.name == name and m.seed == 4 for name, m in casts)
    idx = torch.randint(0, 64, (2, 16))
    model(idx, labels=idx).loss.backward()
    state = model.state_dict()
    assert state["transformer.h.0.mlp.c_fc._extra_state"] == {"calls": 1}
    assert model.transformer.wte.weight.grad is not None and block.attn.c_attn.weight.grad.shape == (32, 96)


def test_exclude_and_keep_match_hf_names_and_blocks():
    model = convert_model(_gpt2(), {"format": "mxfp8", "exclude": ["lm_head"], "keep": {"first": 1, "match": ["*.c_fc"]}})
    assert type(model.lm_head) is nn.Linear and model.lm_head.weight is model.transformer.wte.weight
    first, last = model.transformer.h
    assert str(first.attn.c_attn.casts.fwd_x) == "bf16" and str(first.mlp.c_proj.casts.fwd_x) == "bf16"  # block 0 kept
    assert str(last.mlp.c_fc.casts.fwd_x) == "bf16" and str(last.attn.c_proj.casts.fwd_x) == "mxfp8"


def test_delayed_scaling_hadamard_checks_and_cast_sites_on_conv1d():
    model = convert_model(_gpt2(), {"format": "e4m3fn", "scaling": "delayed", "delayed": {"history_len": 2}})
    assert model.state_dict()["transformer.h.0.attn.c_attn.amax_history"].shape == (len(OPERANDS), 2)
    sites = set()
    with observing_casts(lambda site, *_: sites.add(site)):
        model(torch.randint(0, 64, (1, 8)))
    assert ("transformer.h.1.mlp.c_proj", "fwd_w") in sites and ("lm_head", "fwd_x") in sites
    precision = PrecisionConfig.from_cfg({"format": "nvfp4", "hadamard": {"size": 32, "gemms": ["dgrad"]}})
    gpt2 = _gpt2(n_inner=48)  # c_fc: 48 out features, not a multiple of 32
    with pytest.raises(ValueError, match=r"^precision\.hadamard\.size=32 must divide the dgrad GEMM's reduction axis, "
                       r"but transformer\.h\.0\.mlp\.c_fc has 48 out features"):
        check_hadamard_dims(gpt2, precision, tokens=64)
    check_hadamard_dims(_gpt2(), precision, tokens=64)  # 96, 32, 128, 32, 64 out features: fine


class _NoGemm(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(8, 4)
        self.norm = nn.LayerNorm(4)

    def forward(self, idx):
        return self.norm(self.emb(idx))


@pytest.mark.parametrize("cfg, casts", [({"format": "e4m3fn"}, "linear layers"),
                                        ({"attention": {"format": "e4m3fn"}}, "attention")])
def test_a_model_with_nothing_to_cast_is_a_one_line_error(cfg, casts):
    with pytest.raises(ValueError) as err:
        convert_model(_NoGemm(), cfg)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"precision casts {casts}, but _NoGemm has nothing it can cast; ")
    assert "torch.nn.Linear and transformers Conv1D" in message
    assert convert_model(_NoGemm(), {}) is not None  # fp32 casts nothing: no error
    linear_only = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="precision casts attention, but Sequential"):
        convert_model(linear_only, {"attention": {"format": "e4m3fn"}})
    converted = convert_model(linear_only, {"format": "e4m3fn"})
    assert convert_model(converted, {"format": "e4m3fn"}) is converted  # converted already: no error


@pytest.mark.slow
def test_importing_precisionlab_imports_no_transformers():
    code = ("import sys, precisionlab, precisionlab.quant.linear, precisionlab.quant.hf\n"
            "print('transformers' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
