"""Attention casts in transformers models (Llama, Qwen2 with grouped-query attention, GPT-2) through
the registered "precisionlab" attention function: untouched when precision.attention casts nothing,
the uncast explicit path against transformers' eager attention, fp8_attention bit for bit against
attention written out here with `quantize`, seeds and call counts, the tie of the LM head."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from helpers.extras import require
from precisionlab import parse_format, quantize
from precisionlab.quant.attention import QuantAttend
from precisionlab.quant.hf import IMPLEMENTATION, convert_hf_attention, precisionlab_attention
from precisionlab.quant.linear import QuantConv1D, QuantLinear, convert_model
from precisionlab.quant.operands import AttentionCasts, OperandCast
from precisionlab.quant.recipe import PrecisionConfig

VOCAB, T = 64, 16


@pytest.fixture(autouse=True)
def tiny(monkeypatch):
    monkeypatch.setenv("PRECISIONLAB_COMPILE", "0")  # tiny tensors: never the compiled cast


def _model(arch: str, attn: str = "sdpa"):
    """A 2-block model of `arch` built from its config (no download), attention `attn`, seeded weights."""
    transformers = require("transformers")
    torch.manual_seed(0)
    if arch == "gpt2":
        config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=T,
                                         bos_token_id=0, eos_token_id=0, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0)
        model = transformers.GPT2LMHeadModel(config)
    else:
        kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                  vocab_size=VOCAB, max_position_embeddings=T)
        config = transformers.LlamaConfig(**kw) if arch == "llama" else transformers.Qwen2Config(**kw)
        model = (transformers.LlamaForCausalLM if arch == "llama" else transformers.Qwen2ForCausalLM)(config)
    model.set_attn_implementation(attn)
    return model


def _batch():
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(0, VOCAB, (2, T), generator=gen)
    padding = torch.ones(2, T, dtype=torch.long)
    padding[1, :5] = 0  # left padding: the mask transformers builds is no plain causal one
    return idx, padding


def _step(model, idx, padding=None):
    """Logits and every parameter's gradient of the LM loss."""
    model.zero_grad(set_to_none=True)
    out = model(idx, attention_mask=padding, labels=idx)
    out.loss.backward()
    return [out.logits.detach(), *(p.grad for p in model.parameters())]


ARCHS = ["llama", "qwen2", "gpt2"]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ARCHS)
def test_uncast_attention_leaves_the_model_on_its_own_implementation(arch, attn):
    model = _model(arch, attn)
    keys = set(model.state_dict())
    twin = copy.deepcopy(model)
    idx, padding = _batch()
    fp32 = convert_model(model, PrecisionConfig.from_cfg({}))
    assert fp32 is model and fp32.config._attn_implementation == attn
    assert all(torch.equal(a, b) for a, b in zip(_step(model, idx, padding), _step(twin, idx, padding)))
    convert_model(model, {"format": "e4m3fn", "attention": {"format": "fp32"}})  # linear layers only
    assert model.config._attn_implementation == attn
    assert not any(isinstance(m, QuantAttend) for m in model.modules())
    added = set(model.state_dict()) - keys  # the cast linear layers' call counts, nothing else
    assert added and all(k.endswith("._extra_state") and isinstance(model.get_submodule(k.rpartition(".")[0]),
                                                                     (QuantLinear, QuantConv1D)) for k in added)


FP32_PASS = OperandCast(parse_format("fp32"))  # a cast that changes no bit: the explicit path, nothing cast


@pytest.mark.parametrize("arch", ARCHS)
def test_explicit_path_without_casts_is_eager_attention_to_float_tolerance(arch):
    """The registered path with fp32 "casts" against transformers' eager attention (padding mask,
    grouped-query heads, GPT-2's own scaling). The forward computes the same fp32 operations in the same
    order; the backward computes dk and dv as (dS^T . q) and (dy^T . p)^T, other GEMM orientations
    than autograd's for eager's matmuls, so their sums may round differently: float tolerance."""
    eager = _model(arch, "eager")
    model = convert_hf_attention(copy.deepcopy(eager), AttentionCasts(q=FP32_PASS, k=FP32_PASS, p=FP32_PASS, v=FP32_PASS))
    assert model.config._attn_implementation == IMPLEMENTATION
    idx, padding = _batch()
    for mask in (None, padding):
        got, want = _step(model, idx, mask), _step(eager, idx, mask)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6 * w.abs().max().item())
    cores = [m for m in model.modules() if isinstance(m, QuantAttend)]
    assert len(cores) == 2 and all(core.calls == 2 for core in cores)  # the model did take the registered path
    transformers = require("transformers")
    assert transformers.AttentionInterface()[IMPLEMENTATION] is precisionlab_attention
    assert all("forward" not in vars(m) for m in model.modules())  # every module keeps its class's forward


FP8 = {"q": "e4m3fn", "k": "e4m3fn", "p": "e4m3fn", "v": "e4m3fn", "grad": "e5m2"}


def _reference(q, k, v, dy, scaling, mask=None):
    """fp8_attention written out: S = cast(q) . cast(k)^T * scaling, softmax, y = cast(p) . cast(v), each
    tensor per-tensor scaled (s = 2^floor(log2(max_finite / amax))) and cast with `quantize` (element
    formats: no axis), k and v repeated to q's heads first (grouped-query attention); the backward GEMMs
    cast dS and dy in e5m2, products in fp32; dk and dv summed over each key head's query heads."""
    groups = q.shape[1] // k.shape[1]
    kr, vr = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)

    def cast(t, tensor):
        max_finite = {"e4m3fn": 448.0, "e5m2": 57344.0}[FP8[tensor]]
        s = 2.0 ** math.floor(math.log2(max_finite / t.abs().max().item()))
        return quantize(t * s, FP8[tensor]) / s

    tq, tk = q.shape[-2], k.shape[-2]
    if mask is None:
        mask = torch.ones(tq, tk, dtype=torch.bool).tril()
    add = torch.where(mask, 0.0, torch.finfo(torch.float32).min)
    s_raw = (cast(q, "q") @ cast(kr, "k").transpose(-1, -2)).requires_grad_(True)
    p = torch.softmax(s_raw * scaling + add, dim=-1)
    # v enters y = p . v as a linear layer's W = v^T (as in test_attention.py): cast as v^T (the same values; the
    # layout of the product's operand, which the GEMM's summation order may follow)
    p_q, v_q, dy_q = cast(p.detach(), "p"), cast(vr.transpose(-1, -2), "v").transpose(-1, -2), cast(dy.transpose(1, 2), "grad")
    y = p_q @ v_q
    dp, dvr = dy_q @ v_q.transpose(-1, -2), p_q.transpose(-1, -2) @ dy_q
    (ds,) = torch.autograd.grad(p, s_raw, dp)
    ds_q = cast(ds, "grad")
    dq, dkr = ds_q @ cast(kr, "k"), ds_q.transpose(-1, -2) @ cast(q, "q")
    fold = lambda t: t.view(k.shape[0], k.shape[1], groups, *t.shape[-2:]).sum(2)  # noqa: E731
    return y.transpose(1, 2), dq, fold(dkr), fold(dvr)


@pytest.mark.parametrize("masked", [False, True], ids=["causal", "padding-mask"])
def test_fp8_attention_of_a_gqa_llama_is_the_written_out_formula_bit_for_bit(train_cfg, masked):
    precision = PrecisionConfig.from_cfg(train_cfg("precision=fp8_attention").precision)
    model = convert_model(_model("llama"), precision)
    assert model.config._attn_implementation == IMPLEMENTATION
    attention = model.model.layers[1].self_attn
    assert attention.num_key_value_groups == 2 and isinstance(attention.attend, QuantAttend)
    gen = torch.Generator().manual_seed(2)
    spread = lambda *shape: torch.randn(*shape, generator=gen) * torch.exp(torch.randn(*shape, generator=gen))  # noqa: E731
    q, k, v, dy = spread(2, 4, T, 8), spread(2, 2, T, 8), spread(2, 2, T, 8), 1e-3 * spread(2, T, 4, 8)
    mask = None
    if masked:  # transformers' boolean mask: causal, and the first 5 keys of sequence 1 are padding
        mask = torch.ones(2, 1, T, T, dtype=torch.bool).tril()
        mask[1, :, :, :5] = False
        mask[1, :, :5, 0] = True  # rows that would be empty still see one key
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    y, _ = precisionlab_attention(attention, *leaves, mask, scaling=attention.scaling)
    y.backward(dy)
    got = (y.detach(), *(t.grad for t in leaves))
    want = _reference(q, k, v, dy, attention.scaling, mask)
    for name, g, w in zip(("y", "dq", "dk", "dv"), got, want):
        torch.testing.assert_close(g, w, atol=0, rtol=0, msg=name)
    assert attention.attend.calls == 1
    allowed = torch.ones(T, T, dtype=torch.bool).tril() if mask is None else mask
    plain = torch.softmax((q @ k.repeat_interleave(2, 1).transpose(-1, -2)) * attention.scaling
                          + torch.where(allowed, 0.0, -1e30), -1)  # uncast: the casts must change the result
    assert not torch.equal((plain @ v.repeat_interleave(2, 1)).transpose(1, 2), got[0])


@pytest.mark.slow
def test_cast_attention_runs_in_the_model_seeded_per_block_and_resumes():
    """fp8_attention-like stochastic casts in a whole GQA Llama: every block's core is called, keyed by its
    block index and the run seed; a model rebuilt from the state_dict (call counts in it) draws what the
    uninterrupted one draws, a fresh one draws other bits."""
    precision = {"attention": {"format": "e4m3fn", "grad": {"format": "e5m2"}}, "rounding": "stochastic"}
    base = _model("qwen2")
    make = lambda: convert_model(copy.deepcopy(base), precision, seed=3)  # noqa: E731
    first = make()
    cores = [layer.self_attn.attend for layer in first.model.layers]
    assert [c.index for c in cores] == [0, 1] and [c.name for c in cores] == [
        "model.layers.0.self_attn.attend", "model.layers.1.self_attn.attend"]
    idx, padding = _batch()
    for _ in range(2):
        _step(first, idx, padding)
    assert first.state_dict()["model.layers.1.self_attn.attend._extra_state"] == {"calls": 2}
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    fresh = make()
    a, b, c = _step(first, idx, padding), _step(resumed, idx, padding), _step(fresh, idx, padding)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    uncast = _step(copy.deepcopy(base), idx, padding)
    assert not torch.equal(a[0], uncast[0])


def test_an_unconverted_model_on_the_same_config_attends_uncast():
    """set_attn_implementation changes the config object, which another model built from it shares:
    that model's attention modules have no cast core and attend with transformers' SDPA, uncast."""
    transformers = require("transformers")
    model = _model("llama")
    other = transformers.LlamaForCausalLM(model.config)
    other.load_state_dict(model.state_dict())
    reference = copy.deepcopy(other)  # its own config: still sdpa
    convert_model(model, {"attention": {"format": "e4m3fn"}})
    assert other.config._attn_implementation == IMPLEMENTATION and not hasattr(other.model.layers[0].self_attn, "attend")
    idx, padding = _batch()
    assert all(torch.equal(x, y) for x, y in zip(_step(other, idx, padding), _step(reference, idx, padding)))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lm_head_tie_exclude_and_keep_on_hf_names(arch):
    transformers = require("transformers")
    model = _model(arch)
    if arch == "llama":  # tie the head to the embedding, as GPT-2 does
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**model.config.to_dict(), "tie_word_embeddings": True}))
    embedding = model.get_input_embeddings().weight
    assert model.lm_head.weight is embedding
    cast = convert_model(copy.deepcopy(model), {"format": "e4m3fn", "attention": {"format": "e4m3fn"}})
    assert isinstance(cast.lm_head, QuantLinear) and cast.lm_head.weight is cast.get_input_embeddings().weight
    kept = convert_model(model, {"format": "mxfp8", "exclude": ["lm_head"], "keep": {"last": 1}})
    assert type(kept.lm_head) is torch.nn.Linear and kept.lm_head.weight is embedding
    blocks = kept.model.layers if arch == "llama" else kept.transformer.h
    first = blocks[0].mlp.down_proj if arch == "llama" else blocks[0].mlp.c_fc
    last = blocks[1].mlp.down_proj if arch == "llama" else blocks[1].mlp.c_fc
    assert str(first.casts.fwd_x) == "mxfp8" and str(last.casts.fwd_x) == "bf16"  # the last block kept
    idx, _ = _batch()
    kept(idx, labels=idx).loss.backward()
    assert embedding.grad is not None


def test_attention_variants_the_path_does_not_write_out_are_refused():
    model = convert_model(_model("llama"), {"attention": {"format": "e4m3fn"}})
    attention = model.model.layers[0].self_attn
    q, k = torch.randn(1, 4, 4, 8), torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match=r"^precision\.attention casts LlamaAttention, which uses softcap; .* "
                       r"set precision\.attention\.format=fp32$"):
        precisionlab_attention(attention, q, k, k, None, scaling=0.5, softcap=30.0)
    y, weights = precisionlab_attention(attention, q, k, k, None, scaling=0.5, softcap=None)
    assert y.shape == (1, 4, 4, 8) and weights is None


def test_fp8_attention_inside_the_model_gets_its_scaling_and_padding_mask(train_cfg):
    """In a whole GQA Llama's forward (padding mask), what each block's cast core receives and returns is
    the written-out formula on the q, k, v it receives (k and v repeated to the 4 query heads), with the
    model's scaling and transformers' boolean mask (padding keys masked, causal)."""
    precision = PrecisionConfig.from_cfg(train_cfg("precision=fp8_attention").precision)
    model = convert_model(_model("llama"), precision)
    seen = []
    for layer in model.model.layers:
        layer.self_attn.attend.register_forward_hook(lambda m, args, kwargs, out: seen.append((args, kwargs, out)),
                                                     with_kwargs=True)
    idx, padding = _batch()
    with torch.no_grad():
        model(idx, attention_mask=padding)
    assert len(seen) == 2
    for (q, k, v), kwargs, y in seen:
        assert q.shape == k.shape == (2, 4, T, 8) and kwargs["scaling"] == model.model.layers[0].self_attn.scaling
        mask = kwargs["mask"]
        assert mask.dtype == torch.bool and not mask[1, 0, -1, :5].any() and mask[1, 0, -1, 5:].all()
        assert not mask[0, 0, 0, 1:].any()  # causal
        want = _reference(q, k, v, torch.ones(2, T, 4, 8), kwargs["scaling"], mask)[0]  # forward only
        torch.testing.assert_close(y.transpose(1, 2), want, atol=0, rtol=0)
