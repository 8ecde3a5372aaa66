"""Six operand casts of a linear layer: each GEMM's operands cast along its reduction axis, the
three-role semantics kept for element formats, shared square weight blocks, Hadamard transforms,
seeded stochastic rounding, kept layers and the presets, against references written out here."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import layer_grads
from precisionlab import FloatFormat, parse_format, quantize
from precisionlab.config import validate
from precisionlab.numerics.hadamard import hadamard_matrix, hadamard_transform, random_signs
from precisionlab.quant.linear import QuantLinear, convert_model
from precisionlab.quant.operands import GEMMS, OPERANDS, SEED_SLOT, LayerCasts, OperandCast, mix_seed
from precisionlab.quant.recipe import PrecisionConfig
from precisionlab.store.identity import semantic_config
from precisionlab.train.model import LM, ModelConfig

# each operand's tensor, 2-D view and the axis its GEMM reduces over
AXIS = {"fwd_x": -1, "fwd_w": -1, "dgrad_g": -1, "dgrad_w": 0, "wgrad_g": 0, "wgrad_x": 0}
GEMM_OF = {"fwd_x": "fwd", "fwd_w": "fwd", "dgrad_g": "dgrad", "dgrad_w": "dgrad", "wgrad_g": "wgrad", "wgrad_x": "wgrad"}
OUTPUT_OF = {"fwd": 0, "dgrad": 1, "wgrad": 2}  # index into (y, dx, dW, db)
PAIRS = (("fwd_x", "wgrad_x"), ("fwd_w", "dgrad_w"), ("dgrad_g", "wgrad_g"))  # the two operands of one tensor


@pytest.fixture(autouse=True)
def tiny_and_serial(monkeypatch):
    """Tiny tensors: never the compiled cast (its one-off compile would dominate the run time), and
    one thread (their GEMMs are faster alone than synchronising threads on a busy machine)."""
    monkeypatch.setenv("PRECISIONLAB_COMPILE", "0")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _linear(in_f, out_f, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(in_f, out_f)
    nn.init.normal_(lin.bias)
    return lin


def _heavy(shape, gen):
    """Normal values times a log-normal spread: blocks along different axes see different amaxes."""
    return torch.randn(shape, generator=gen) * torch.exp(1.5 * torch.randn(shape, generator=gen))


def _reference(lin, x, g, casts, axes=AXIS, rotate=None):
    """The three GEMMs written out. casts: operand -> dict(fmt=..., and quantize's keywords) or
    absent (fp32); each operand is cast with `quantize` along its axis from the fp32 tensor (after
    the Hadamard rotation of its GEMM, `rotate`: gemm -> matrix; axis 0 of a 2-D tensor as the
    last axis of its transpose, so the reference relies on no axis handling), products in fp32."""
    rotate = rotate or {}
    w, b = lin.weight.detach(), lin.bias.detach()
    out_f, in_f = w.shape
    x2, g2 = x.reshape(-1, in_f), g.reshape(-1, out_f)  # (N, in), (N, out)

    def q(op, t):
        if op not in casts:
            return t
        kw = dict(casts[op])
        fmt, axis = kw.pop("fmt"), axes[op]
        if axis == 0 and t.dim() == 2:  # down the columns: along the rows of the transpose, written out
            return quantize(t.t().contiguous(), fmt, axis=-1, **kw).t().contiguous()
        return quantize(t, fmt, axis=axis, **kw)

    def rot(gemm, t, axis):
        return t if gemm not in rotate else hadamard_transform(t, rotate[gemm], axis)

    y = F.linear(q("fwd_x", rot("fwd", x, -1)), q("fwd_w", rot("fwd", w, -1)), b)
    dx = (q("dgrad_g", rot("dgrad", g2, -1)) @ q("dgrad_w", rot("dgrad", w, 0))).view(x.shape)
    dw = q("wgrad_g", rot("wgrad", g2, 0)).t() @ q("wgrad_x", rot("wgrad", x2, 0))
    return y, dx, dw, g2.sum(0)


def _fmts(**names):
    return {op: {"fmt": name} for op, name in names.items()}


# --------------------------------------------------------------------------- six casts, block formats

MIXED_OPERANDS = {  # a different format per operand: a wrong operand or axis shows
    "fwd_x": "mxfp4", "fwd_w": "nvfp4", "dgrad_g": "e2m1fn/b16/e4m3fn",
    "dgrad_w": "mxfp8", "wgrad_g": "e4m3fn/b8/bf16", "wgrad_x": "mxfp6",
}
SETTINGS = {
    "mxfp8": ({"format": "mxfp8"}, dict.fromkeys(OPERANDS, "mxfp8")),
    "mxfp4": ({"format": "mxfp4"}, dict.fromkeys(OPERANDS, "mxfp4")),
    "nvfp4": ({"format": "nvfp4"}, dict.fromkeys(OPERANDS, "nvfp4")),
    "generic": ({"format": "e2m1fn/b16/e4m3fn"}, dict.fromkeys(OPERANDS, "e2m1fn/b16/e4m3fn")),
    "roles": ({"x": "mxfp4", "w": "mxfp8", "grad": "nvfp4"},
              {"fwd_x": "mxfp4", "wgrad_x": "mxfp4", "fwd_w": "mxfp8", "dgrad_w": "mxfp8", "dgrad_g": "nvfp4",
               "wgrad_g": "nvfp4"}),
    "mixed": ({"format": "mxfp4", "operands": {op: {"format": f} for op, f in MIXED_OPERANDS.items() if f != "mxfp4"}},
              MIXED_OPERANDS),
}
SHAPES = {  # (batch, seq, in, out)
    "partial": (3, 7, 40, 24),  # 21 tokens, 40 in, 24 out: a partial last block on every axis
    "whole": (2, 16, 64, 32),  # multiples of every block
}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("setting", SETTINGS.values(), ids=SETTINGS.keys())
def test_block_casts_along_each_gemms_reduction_axis(setting, shape):
    cfg, names = setting
    batch, seq, in_f, out_f = shape
    gen = torch.Generator().manual_seed(in_f)
    lin = _linear(in_f, out_f)
    with torch.no_grad():
        lin.weight.copy_(_heavy(lin.weight.shape, gen) * 0.1)
    x, g = _heavy((batch, seq, in_f), gen), _heavy((batch, seq, out_f), gen) * 1e-3
    layer = QuantLinear(copy.deepcopy(lin), PrecisionConfig.from_cfg(cfg))
    assert {op: str(layer.casts.operand(op)) for op in OPERANDS} == {op: str(parse_format(n)) for op, n in names.items()}
    assert not (layer.casts.share_x or layer.casts.share_w or layer.casts.share_g)  # 1-D blocks: each cast its own
    got = layer_grads(layer, x, g)
    casts = _fmts(**names)
    want = _reference(lin, x, g, casts)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    # the axis matters: each operand cast along the other axis changes its GEMM's result
    for op in OPERANDS:
        wrong = _reference(lin, x, g, casts, axes={**AXIS, op: -1 if AXIS[op] == 0 else 0})
        k = OUTPUT_OF[GEMM_OF[op]]
        assert not torch.equal(got[k], wrong[k]), op
    if setting is SETTINGS["mixed"]:  # and each operand has its own cast: swapping a tensor's two changes both GEMMs
        for a, b in PAIRS:
            swapped = _reference(lin, x, g, {**casts, a: casts[b], b: casts[a]})
            for op in (a, b):
                k = OUTPUT_OF[GEMM_OF[op]]
                assert not torch.equal(got[k], swapped[k]), op


def test_uncast_operands_stay_fp32():
    """Only the overridden operand is cast: every other one reads the fp32 tensor."""
    gen = torch.Generator().manual_seed(5)
    lin = _linear(40, 24)
    x, g = _heavy((3, 7, 40), gen), _heavy((3, 7, 24), gen)
    full = _reference(lin, x, g, {})
    for op in OPERANDS:
        precision = PrecisionConfig.from_cfg({"format": "fp32", "operands": {op: {"format": "mxfp4"}}})
        got = layer_grads(QuantLinear(copy.deepcopy(lin), precision), x, g)
        want = _reference(lin, x, g, _fmts(**{op: "mxfp4"}))
        for a, b in zip(got, want):
            assert torch.equal(a, b)
        changed = tuple(not torch.equal(a, b) for a, b in zip(got, full))
        assert changed == tuple(k == OUTPUT_OF[GEMM_OF[op]] for k in range(4)), op


# --------------------------------------------------------------------------- element formats: the three roles


def _scale(t, fmt):
    """Per-tensor power-of-two scale 2^floor(log2(max_finite / amax)) (per-tensor scaling)."""
    amax = t.abs().max().item()
    return 2.0 ** math.floor(math.log2(FloatFormat.parse(fmt).max_finite / amax))


@pytest.mark.parametrize("rounding", ["nearest_even", "stochastic"])
@pytest.mark.parametrize("scaling", ["none", "tensor"])
def test_element_formats_keep_the_three_role_semantics(scaling, rounding):
    """x cast once for forward and wgrad, W once, g once, seeded by slots 0 (x), 1 (w), 2 (grad)."""
    gen = torch.Generator().manual_seed(6)
    lin = _linear(24, 16)
    x, g = torch.randn(4, 5, 24, generator=gen) * 3, torch.randn(4, 5, 16, generator=gen) * 1e-4
    fmts = {"x": "e4m3fn", "w": "e3m4", "grad": "e5m2"}
    precision = PrecisionConfig.from_cfg({**fmts, "scaling": scaling, "rounding": rounding})
    layer = QuantLinear(copy.deepcopy(lin), precision, index=3, seed=11)
    assert layer.casts.share_x and layer.casts.share_w and layer.casts.share_g
    assert SEED_SLOT["fwd_x"] == 0 and SEED_SLOT["fwd_w"] == 1 and SEED_SLOT["dgrad_g"] == 2
    w, b = lin.weight.detach(), lin.bias.detach()
    outputs = []

    def role(t, r, calls, slot):
        seed = mix_seed(11, 3, calls, slot) if rounding == "stochastic" else 0
        s = _scale(t, fmts[r]) if scaling == "tensor" else 1.0
        return quantize(t * s, fmts[r], rounding=rounding, seed=seed) / s

    for calls in range(2):
        x_q, w_q, g_q = role(x, "x", calls, 0), role(w, "w", calls, 1), role(g, "grad", calls, 2)  # each cast once
        want = (F.linear(x_q, w_q, b), (g_q.reshape(-1, 16) @ w_q).view(x.shape),
                g_q.reshape(-1, 16).t() @ x_q.reshape(-1, 24), g.reshape(-1, 16).sum(0))
        got = layer_grads(layer, x, g)
        for a, c in zip(got, want):
            assert torch.equal(a, c)
        outputs.append(got)
    assert layer.calls == 2
    same = all(torch.equal(a, c) for a, c in zip(outputs[0][:3], outputs[1][:3]))
    assert same == (rounding == "nearest_even")  # stochastic: each call draws new bits


def test_configs_without_the_new_keys_keep_their_identity(train_cfg):
    """The new keys sit at neutral defaults: absent from the semantic config, so run ids stay put."""
    for overrides in [(), ("precision=fp8",), ("precision=mask", "precision.format=e8m3")]:
        semantic = semantic_config(validate(train_cfg(*overrides)))
        assert not {"operands", "hadamard", "keep"} & set(semantic.get("precision", {})), overrides
    semantic = semantic_config(validate(train_cfg("precision=nvfp4")))
    assert {"operands", "hadamard", "keep"} <= set(semantic["precision"])  # set, they count


# --------------------------------------------------------------------------- 16x16 weight blocks


SQUARE = "e2m1fn/b16x16/e4m3fn/tensor"


def test_square_weight_blocks_one_cast_serves_forward_and_dgrad(train_cfg):
    casts = PrecisionConfig.from_cfg(train_cfg("precision=nvfp4").precision).casts
    assert casts.fwd_w.fmt == casts.dgrad_w.fmt == parse_format(SQUARE)
    assert casts.share_w and not casts.share_x and not casts.share_g
    assert not PrecisionConfig.from_cfg({"format": "nvfp4"}).casts.share_w  # 1x16 weight blocks: two casts
    gen = torch.Generator().manual_seed(7)
    for shape in [(48, 32), (40, 24)]:  # whole and partial 16x16 tiles
        w = _heavy(shape, gen)
        assert torch.equal(quantize(w, SQUARE, axis=0), quantize(w, SQUARE, axis=-1))
        assert not torch.equal(quantize(w, "nvfp4", axis=0), quantize(w, "nvfp4", axis=-1))

    lin = _linear(40, 24)
    with torch.no_grad():
        lin.weight.copy_(_heavy(lin.weight.shape, gen))
    x, g = _heavy((3, 7, 40), gen), _heavy((3, 7, 24), gen)
    det = PrecisionConfig.from_cfg({"format": "nvfp4", "w": SQUARE})
    got = layer_grads(QuantLinear(copy.deepcopy(lin), det), x, g)
    want = _reference(lin, x, g, _fmts(fwd_x="nvfp4", fwd_w=SQUARE, dgrad_g="nvfp4", dgrad_w=SQUARE,
                                        wgrad_g="nvfp4", wgrad_x="nvfp4"))  # dgrad_w: axis 0
    for a, b in zip(got, want):
        assert torch.equal(a, b)

    # stochastic weight rounding: the one cast (seed slot 1) serves both GEMMs
    sr = PrecisionConfig.from_cfg({"format": "nvfp4", "w": SQUARE, "operands": {
        "fwd_w": {"rounding": "stochastic"}, "dgrad_w": {"rounding": "stochastic"}}})
    assert sr.casts.share_w
    got = layer_grads(QuantLinear(copy.deepcopy(lin), sr, index=1, seed=4), x, g)
    w_q = quantize(lin.weight.detach(), SQUARE, rounding="stochastic", seed=mix_seed(4, 1, 0, SEED_SLOT["fwd_w"]))
    x_q, g_q = quantize(x, "nvfp4"), quantize(g.reshape(-1, 24), "nvfp4")
    assert torch.equal(got[0], F.linear(x_q, w_q, lin.bias.detach()))
    assert torch.equal(got[1], (g_q @ w_q).view(x.shape))


def test_nvfp4_preset_layer_equals_its_recipe_written_out(train_cfg):
    """The whole recipe: 1x16 x and g, one 16x16 W cast, stochastic g (slots 2 and 5), a fixed-sign
    Hadamard of size 16 on both wgrad operands (sign seed from the layer, GEMM slot 6 + 2)."""
    precision = PrecisionConfig.from_cfg(train_cfg("precision=nvfp4").precision)
    gen = torch.Generator().manual_seed(8)
    lin = _linear(32, 48)
    x, g = _heavy((2, 16, 32), gen), _heavy((2, 16, 48), gen) * 1e-3
    layer = QuantLinear(copy.deepcopy(lin), precision, index=5, seed=13)
    h = hadamard_matrix(16, random_signs(16, mix_seed(13, 5, 6 + GEMMS.index("wgrad"))))
    for calls in range(2):
        seed = {op: mix_seed(13, 5, calls, SEED_SLOT[op]) for op in ("dgrad_g", "wgrad_g")}
        casts = _fmts(fwd_x="nvfp4", fwd_w=SQUARE, dgrad_w=SQUARE, wgrad_x="nvfp4")
        casts.update({op: {"fmt": "nvfp4", "rounding": "stochastic", "seed": seed[op]} for op in seed})
        got = layer_grads(layer, x, g)
        want = _reference(lin, x, g, casts, rotate={"wgrad": h})
        for a, b in zip(got, want):
            assert torch.equal(a, b)
        unrotated = _reference(lin, x, g, casts)
        assert not torch.equal(got[2], unrotated[2])


# --------------------------------------------------------------------------- Hadamard transforms


def _rotating(cast, gemms=GEMMS, size=16, per_call=False):
    return dataclasses.replace(LayerCasts.uniform(cast), hadamard=size, hadamard_gemms=tuple(gemms),
                               per_call_signs=per_call)


@pytest.mark.parametrize("per_call", [False, True])
def test_hadamard_without_casts_is_the_plain_linear_to_fp32_rounding(per_call):
    gen = torch.Generator().manual_seed(9)
    lin = _linear(32, 48)
    x, g = torch.randn(2, 8, 32, generator=gen), torch.randn(2, 8, 48, generator=gen)
    layer = QuantLinear(copy.deepcopy(lin), _rotating(OperandCast(None), per_call=per_call), index=1, seed=2)
    plain = layer_grads(copy.deepcopy(lin), x, g)
    got = layer_grads(layer, x, g)
    for a, b in zip(got, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
    assert not all(torch.equal(a, b) for a, b in zip(got[:3], plain[:3]))  # the transform rounds in fp32


@pytest.mark.parametrize("gemm", GEMMS)
def test_hadamard_changes_only_the_block_casts_of_its_gemm(gemm):
    gen = torch.Generator().manual_seed(10)
    lin = _linear(64, 32)
    x, g = _heavy((2, 16, 64), gen), _heavy((2, 16, 32), gen)
    cast = OperandCast(parse_format("mxfp4"))
    plain = layer_grads(QuantLinear(copy.deepcopy(lin), LayerCasts.uniform(cast)), x, g)
    got = layer_grads(QuantLinear(copy.deepcopy(lin), _rotating(cast, gemms=(gemm,))), x, g)
    changed = tuple(not torch.equal(a, b) for a, b in zip(got, plain))
    assert changed == tuple(k == OUTPUT_OF[gemm] for k in range(4))
    torch.testing.assert_close(got[OUTPUT_OF[gemm]], plain[OUTPUT_OF[gemm]], rtol=0.5, atol=0.5 * plain[OUTPUT_OF[gemm]].abs().max().item())


@pytest.mark.parametrize("signs", ["fixed", "per_call"])
def test_hadamard_equals_explicit_rotation_then_cast(signs):
    """Every GEMM rotated; signs from the seeds QuantLinear documents: fixed mix_seed(seed, index,
    6 + gemm), per call mix_seed(seed, index, calls, 6 + gemm)."""
    gen = torch.Generator().manual_seed(11)
    lin = _linear(32, 48)
    x, g = _heavy((2, 16, 32), gen), _heavy((2, 16, 48), gen)
    precision = PrecisionConfig.from_cfg({"format": "fp32", "operands": {op: {"format": f} for op, f in MIXED_OPERANDS.items()},
                                          "hadamard": {"size": 16, "gemms": ["fwd", "dgrad", "wgrad"], "signs": signs}})
    layer = QuantLinear(copy.deepcopy(lin), precision, index=4, seed=21)
    results, matrices = [], []
    for calls in range(2):
        seeds = [mix_seed(21, 4, 6 + k) if signs == "fixed" else mix_seed(21, 4, calls, 6 + k) for k in range(3)]
        rotate = {gemm: hadamard_matrix(16, random_signs(16, s)) for gemm, s in zip(GEMMS, seeds)}
        got = layer_grads(layer, x, g)
        want = _reference(lin, x, g, _fmts(**MIXED_OPERANDS), rotate=rotate)
        for a, b in zip(got, want):
            assert torch.equal(a, b)
        results.append(got)
        matrices.append(rotate)
    same_signs = all(torch.equal(matrices[0][k], matrices[1][k]) for k in GEMMS)
    same_out = all(torch.equal(a, b) for a, b in zip(results[0][:3], results[1][:3]))
    assert same_signs == same_out == (signs == "fixed")  # per call: fresh signs, another result


def test_hadamard_matrix_is_signed_scipy_hadamard_and_orthogonal():
    for n in (16, 32, 128):
        signs = random_signs(n, seed=n)
        assert set(signs.tolist()) == {-1.0, 1.0}
        m = hadamard_matrix(n, signs)
        want = signs.double().numpy()[:, None] * scipy.linalg.hadamard(n) / np.sqrt(n)
        np.testing.assert_allclose(m.double().numpy(), want, rtol=2**-24, atol=0)
        eye = torch.eye(n)
        torch.testing.assert_close(m @ m.T, eye, rtol=0, atol=4 * n * 2**-24)
        torch.testing.assert_close(m.T @ m, eye, rtol=0, atol=4 * n * 2**-24)


# --------------------------------------------------------------------------- stochastic rounding


def test_stochastic_wgrad_gradient_is_unbiased_nearest_even_is_not():
    """x = I: dW = wgrad_g(g)^T exactly, so dW of each call is one stochastic MXFP4 cast of g."""
    gen = torch.Generator().manual_seed(12)
    n, out_f, calls = 64, 8, 600
    g2 = (torch.rand(n, out_f, generator=gen) * 2 - 1) * 0.999
    g2[0], g2[32] = 1.0, -1.0  # each 32-token block's amax is 1: scale 2^-2, |g/s| <= 4 < 6, no saturation
    g, x = g2.view(2, 32, out_f), torch.eye(n).view(2, 32, n)

    def layer(rounding):
        precision = PrecisionConfig.from_cfg({"format": "fp32", "operands": {"wgrad_g": {"format": "mxfp4", "rounding": rounding}}})
        return QuantLinear(_linear(n, out_f), precision, index=2, seed=3)

    sr = layer("stochastic")
    draws = torch.stack([layer_grads(sr, x, g)[2].t() for _ in range(calls)]).double()  # (calls, n, out)
    assert sr.calls == calls and len({d.numpy().tobytes() for d in draws[:20]}) == 20  # new bits every call
    assert torch.equal(draws[0].float(), quantize(g2, "mxfp4", axis=0, rounding="stochastic", seed=mix_seed(3, 2, 0, 5)))
    exact = g2.double()
    mean, se = draws.mean(0), draws.std(0) / calls**0.5
    assert ((mean - exact).abs() <= 5 * se + 1e-12).all()
    assert (se > 0).float().mean() > 0.9  # most values lie between two grid points
    nearest = layer_grads(layer("nearest_even"), x, g)[2].t().double()
    biased = (nearest - exact).abs() > 5 * se + 1e-12
    assert biased.float().mean() > 0.5  # the same bound flags nearest rounding's error as bias


@pytest.mark.parametrize("signs", ["fixed", "per_call"])
def test_resumed_layer_draws_what_the_uninterrupted_one_draws(signs):
    gen = torch.Generator().manual_seed(13)
    lin = _linear(32, 16)
    x, g = _heavy((2, 8, 32), gen), _heavy((2, 8, 16), gen)
    precision = PrecisionConfig.from_cfg({"format": "mxfp4", "rounding": "stochastic",
                                          "hadamard": {"size": 16, "gemms": ["fwd", "dgrad", "wgrad"], "signs": signs}})
    make = lambda: QuantLinear(copy.deepcopy(lin), precision, index=2, seed=9)
    first = make()
    for _ in range(3):
        layer_grads(first, x, g)
    resumed = make()
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))
    assert resumed.calls == 3
    fresh = make()
    for _ in range(2):
        a, b, c = layer_grads(first, x, g), layer_grads(resumed, x, g), layer_grads(fresh, x, g)
        assert all(torch.equal(p, q) for p, q in zip(a, b))
        assert not any(torch.equal(p, q) for p, q in zip(a[:3], c[:3]))  # the call count matters


# --------------------------------------------------------------------------- kept layers


def _kinds(model):
    """Module name -> the casts' format name of each linear ("linear" for an nn.Linear)."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            assert len({str(module.casts.operand(op)) for op in OPERANDS}) == 1
            out[name] = str(module.casts.fwd_x)
        elif type(module) is nn.Linear:
            out[name] = "linear"
    return out


def _lm():
    torch.manual_seed(0)
    return LM(ModelConfig(n_layer=3, n_embd=32, n_head=2))


def test_keep_first_last_and_match_get_the_keep_format():
    model = convert_model(_lm(), PrecisionConfig.from_cfg({"format": "e4m3fn", "keep": {"format": "bf16", "first": 1, "last": 1, "match": ["lm_head"]}}),
                          seed=5)
    kinds = _kinds(model)
    assert len(kinds) == 13
    for name, kind in kinds.items():
        kept = name == "lm_head" or name.startswith(("blocks.0.", "blocks.2."))
        assert kind == ("bf16" if kept else "e4m3fn"), name
    kept = model.blocks[0].attn.c_attn.casts
    assert kept == LayerCasts.uniform(OperandCast(FloatFormat.parse("bf16")))
    assert model.blocks[1].mlp.c_fc.casts == PrecisionConfig.from_cfg({"format": "e4m3fn"}).casts
    # seeds: the index counts every converted layer in order, kept ones included
    names = [n for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    assert [model.get_submodule(n).index for n in names] == list(range(13))
    assert {model.get_submodule(n).seed for n in names} == {5}
    assert model.lm_head.weight is model.wte.weight  # tying survives the swap
    idx = torch.randint(0, 256, (2, 8))
    _, loss = model(idx, idx)
    loss.backward()
    assert model.wte.weight.grad is not None and torch.isfinite(model.wte.weight.grad).all()


def test_keep_fp32_leaves_nn_linear_and_exclude_still_works():
    model = convert_model(_lm(), PrecisionConfig.from_cfg({"format": "mxfp4", "keep": {"format": "fp32", "last": 2}}))
    kinds = _kinds(model)
    assert {n for n, k in kinds.items() if k == "linear"} == {n for n in kinds if n.startswith(("blocks.1.", "blocks.2."))}
    assert {k for k in kinds.values()} == {"linear", "mxfp4"}
    model = convert_model(_lm(), PrecisionConfig.from_cfg({"format": "mxfp4", "exclude": ["lm_head"], "keep": {"first": 1}}))
    kinds = _kinds(model)
    assert kinds["lm_head"] == "linear" and model.lm_head.weight is model.wte.weight
    assert {n for n, k in kinds.items() if k == "bf16"} == {n for n in kinds if n.startswith("blocks.0.")}
    assert {n for n, k in kinds.items() if k == "mxfp4"} == {n for n in kinds if n.startswith(("blocks.1.", "blocks.2."))}
    # keep.match alone, in the default keep format (bf16)
    model = convert_model(_lm(), PrecisionConfig.from_cfg({"format": "mxfp4", "keep": {"match": ["*.mlp.*"]}}))
    assert {n for n, k in _kinds(model).items() if k == "bf16"} == {f"blocks.{i}.mlp.{p}" for i in range(3) for p in ("c_fc", "c_proj")}
    # fp32 with keep in bf16: only the kept layers are converted
    model = convert_model(_lm(), PrecisionConfig.from_cfg({"format": "fp32", "keep": {"match": ["lm_head"]}}))
    assert {k for n, k in _kinds(model).items() if n != "lm_head"} == {"linear"} and _kinds(model)["lm_head"] == "bf16"


# --------------------------------------------------------------------------- presets


def _casts(train_cfg, preset):
    return PrecisionConfig.from_cfg(validate(train_cfg(f"precision={preset}")).precision)


def _ops(casts, attr):
    return {op: getattr(casts.operand(op), attr) for op in OPERANDS}


@pytest.mark.parametrize("preset, fmt, rule", [("mxfp8", "e4m3fn/b32/e8m0/rceil", "rceil"), ("mxfp4", "mxfp4", "floor")])
def test_mx_presets(train_cfg, preset, fmt, rule):
    precision = _casts(train_cfg, preset)
    casts = precision.casts
    assert set(_ops(casts, "fmt").values()) == {parse_format(fmt)}
    f = casts.fwd_x.fmt
    assert (f.block, f.block_cols, f.scale, f.rule, f.tensor_scale) == (32, 1, "e8m0", rule, False)
    assert set(_ops(casts, "rounding").values()) == {"nearest_even"}
    assert casts.hadamard == 0 and not casts.needs_seeds
    assert precision.keep.match == ("lm_head",) and precision.exclude == ()
    assert precision.layer_casts("lm_head") == LayerCasts.uniform(OperandCast(FloatFormat.parse("bf16")))
    assert precision.layer_casts("blocks.0.attn.c_attn", 0, 2) == casts


def test_mxfp4_rht_sr_preset(train_cfg):
    casts = _casts(train_cfg, "mxfp4_rht_sr").casts
    assert set(_ops(casts, "fmt").values()) == {parse_format("mxfp4")}
    assert {op for op, r in _ops(casts, "rounding").items() if r == "stochastic"} == {"dgrad_g", "wgrad_g"}
    assert (casts.hadamard, casts.hadamard_gemms, casts.per_call_signs) == (32, ("wgrad",), False)


@pytest.mark.parametrize("preset, hadamard, stochastic", [
    ("nvfp4", 16, {"dgrad_g", "wgrad_g"}), ("nvfp4_no_rht", 0, {"dgrad_g", "wgrad_g"}), ("nvfp4_no_sr", 16, set()),
])
def test_nvfp4_presets(train_cfg, preset, hadamard, stochastic):
    precision = _casts(train_cfg, preset)
    casts = precision.casts
    fmts = _ops(casts, "fmt")
    assert {op for op, f in fmts.items() if f == parse_format("nvfp4")} == {"fwd_x", "dgrad_g", "wgrad_g", "wgrad_x"}
    assert {op for op, f in fmts.items() if f == parse_format(SQUARE)} == {"fwd_w", "dgrad_w"}
    nv = casts.fwd_x.fmt
    assert (str(nv.element), nv.block, nv.block_cols, nv.scale, nv.rule, nv.tensor_scale) == ("e2m1fn", 16, 1, "e4m3fn", "amax", True)
    assert casts.fwd_w.fmt.block_cols == 16 and casts.share_w
    assert {op for op, r in _ops(casts, "rounding").items() if r == "stochastic"} == stochastic
    assert casts.hadamard == hadamard and casts.hadamard_gemms == (("wgrad",) if hadamard else ())
    assert not casts.per_call_signs
    assert precision.keep.match == ("lm_head",) and (precision.keep.first, precision.keep.last) == (0, 0)
    assert precision.layer_casts("lm_head") == LayerCasts.uniform(OperandCast(FloatFormat.parse("bf16")))
