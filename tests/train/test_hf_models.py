"""Hugging Face architectures trained from scratch (model=hf, precisionlab.train.hf): built from a config,
HF's own module names and init, our loss; trained, resumed, branched, measured (sharpness, diagnostics)
by the same loop; bad input one line, exit 2, nothing written."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from helpers import CLI, MemoryRecorder, compose_train, one_line_exit_2
from helpers.extras import require
from precisionlab.cli import app
from precisionlab.config import ConfigError, validate
from precisionlab.quant.linear import QuantLinear
from precisionlab.store import ResultsStore, run_id
from precisionlab.train.checkpoint import build_model
from precisionlab.train.loop import run
from precisionlab.train.sharpness import measure

transformers = require("transformers")

# A micro HF Llama and run (the sizes of helpers.MICRO's model, in HF's keys).
HF_MICRO = [
    "model=hf", "model.hf.hidden_size=32", "model.hf.num_hidden_layers=2", "model.hf.num_attention_heads=2",
    "model.hf.intermediate_size=96",
    "train.steps=10", "train.batch_size=4", "train.seq_len=16",
    "train.eval_every=5", "train.eval_batches=2", "train.threads=1", "optim.warmup_steps=2",
]


def _cfg(*overrides: str):
    return validate(compose_train(*HF_MICRO, *overrides, micro=False))


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _expected_params(arch: str, V: int, C: int, L: int, I: int, P: int) -> int:
    """Parameters written out per architecture (tied embeddings counted once)."""
    if arch == "gpt2":  # wte, wpe; per block: ln_1, c_attn (3C x C + 3C), c_proj, ln_2, c_fc, c_proj; ln_f
        block = 2 * C + (3 * C * C + 3 * C) + (C * C + C) + 2 * C + (C * I + I) + (I * C + C)
        return V * C + P * C + L * block + 2 * C
    attention = 4 * C * C + (3 * C if arch == "qwen2" else 0)  # Qwen2's q, k, v projections have biases
    norms = 4 * C if arch == "olmo2" else 2 * C  # OLMo2: q_norm, k_norm and two post-norms
    return V * C + L * (attention + 3 * C * I + norms) + C


@pytest.mark.parametrize("preset, sizes", [("hf", (128, 2, 384)), ("hf_small", (384, 6, 1024))])
@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2", "olmo2"])
def test_presets_build_with_the_parameter_count_of_their_sizes(preset, sizes, arch):
    cfg = validate(compose_train(f"model={preset}", f"model.hf.arch={arch}", micro=False))
    torch.manual_seed(0)
    model = build_model(cfg)
    C, L, I = sizes
    assert model.num_params() == _expected_params(arch, 256, C, L, I, 64)
    assert isinstance(model, transformers.PreTrainedModel) and model.config.model_type == arch
    assert model.config._attn_implementation == "sdpa"
    assert model.lm_head.weight is model.get_input_embeddings().weight  # tied


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_names_and_init_are_hugging_faces_own_and_the_loss_is_our_cross_entropy(arch):
    cfg = _cfg(f"model.hf.arch={arch}")
    torch.manual_seed(3)
    ours = build_model(cfg)
    torch.manual_seed(3)  # HF's own model of the same config, built as HF users build it
    theirs = transformers.AutoModelForCausalLM.from_config(ours.config)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in ours.state_dict().items())
    names = {name for name, _ in ours.named_modules()}
    assert {"lm_head", "model.layers.1.self_attn.q_proj" if arch != "gpt2" else "transformer.h.1.attn.c_attn"} <= names
    x = torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(2))  # already shifted targets
    logits, loss = ours(x, y)
    hf_logits = theirs(input_ids=x).logits
    assert torch.equal(logits, hf_logits)
    assert torch.equal(loss, F.cross_entropy(hf_logits.view(-1, 256), y.view(-1)))
    # HF's own loss of unshifted labels (shift_labels: no shift) agrees to rounding
    hf_loss = theirs(input_ids=x, labels=y, shift_labels=y).loss
    assert torch.allclose(loss, hf_loss, rtol=1e-6, atol=0)


def test_eager_attention_is_chosen_by_key_and_computes_what_sdpa_does():
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    losses = {}
    for impl in ("sdpa", "eager"):
        torch.manual_seed(0)
        model = build_model(_cfg(f"model.hf.attn_implementation={impl}"))
        assert model.config._attn_implementation == impl and model.fresh().config._attn_implementation == impl
        losses[impl] = model(x, x)[1]
    assert torch.allclose(losses["sdpa"], losses["eager"], rtol=1e-5, atol=0)


def test_the_seed_draws_the_initial_weights():
    a, b, c = (build_model(_cfg(f"seed={s}")) if torch.manual_seed(s) else None for s in (1, 1, 2))
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_a_recipe_casts_hugging_faces_linears_and_keeps_its_first_block():
    model = build_model(_cfg("precision=fp8", "precision.keep.first=1", "precision.keep.format=bf16"))
    q0, q1 = model.model.layers[0].self_attn.q_proj, model.model.layers[1].self_attn.q_proj
    assert isinstance(q0, QuantLinear) and isinstance(q1, QuantLinear)
    assert q0.casts.fwd_x.fmt.name == "bf16" and q1.casts.fwd_x.fmt.name == "e4m3fn"
    assert type(model.lm_head) is torch.nn.Linear  # fp8's exclude: [lm_head]
    assert model.lm_head.weight is model.model.embed_tokens.weight  # the tie survives the swap


def test_a_recipe_casts_gpt2s_conv1d_projections():
    model = build_model(_cfg("model.hf.arch=gpt2", "precision=fp8"))
    casts = {name for name, m in model.named_modules() if type(m).__name__ in ("QuantLinear", "QuantConv1D")}
    assert {"transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj"} <= casts and "lm_head" not in casts


@pytest.mark.parametrize("precision", [["precision=fp32"], ["precision=fp8"], ["precision=fp8_attention"],
                                       ["precision=mask", "precision.format=e5m2", "precision.rounding=stochastic"]])
def test_resume_continues_the_curve_bit_for_bit(precision):
    rec_straight = MemoryRecorder()
    straight = run(_cfg(*precision, "train.checkpoint_steps=[4]", "train.checkpoint_dir=first"), recorder=rec_straight)
    assert straight.status == "completed", straight.error
    rec = MemoryRecorder()
    resumed = run(_cfg(*precision, "train.checkpoint_dir=second"), recorder=rec, resume_from=straight.checkpoints[0][1])
    assert resumed.status == "completed", resumed.error
    assert rec.losses() == rec_straight.losses()[4:] and len(rec.losses()) == 6
    assert rec.losses("val") == rec_straight.losses("val") and resumed.final_val_loss == straight.final_val_loss


def test_an_unchanged_branch_continues_its_parent_and_a_changed_one_differs(tmp_path):
    parent_cfg = _cfg("train.checkpoint_steps=[4]", f"train.checkpoint_dir={tmp_path / 'parent'}")
    parent, rec_parent = run(parent_cfg, recorder=(rp := MemoryRecorder())), rp
    at4 = dict(parent.checkpoints)[4]
    for precision, same in (("precision=fp32", True), ("precision=fp8", False)):
        rec = MemoryRecorder()
        cfg = _cfg(precision, f"train.checkpoint_dir={tmp_path / str(same)}", f"init.parent={run_id(parent_cfg)}@4")
        branch = run(cfg, recorder=rec, resume_from=at4)
        assert branch.status == "completed" and rec.losses()[0][0] == 5, branch.error
        assert (rec.losses() == rec_parent.losses()[4:]) is same


def test_a_branch_to_another_hf_shape_is_one_line(tmp_path):
    parent_cfg = _cfg("train.checkpoint_steps=[4]", f"train.checkpoint_dir={tmp_path / 'parent'}")
    at4 = dict(run(parent_cfg, recorder=MemoryRecorder()).checkpoints)[4]
    branch = _cfg("model.hf.intermediate_size=64", f"init.parent={run_id(parent_cfg)}@4")
    with pytest.raises(ConfigError, match="the checkpoint's weights do not fit this run's model"):
        run(branch, recorder=MemoryRecorder(), resume_from=at4)


def test_sharpness_and_diagnostics_measure_without_changing_the_curve():
    plain = MemoryRecorder()
    run(_cfg("precision=fp8_attention"), recorder=plain)
    rec = MemoryRecorder()
    result = run(_cfg("precision=fp8_attention", "sharpness.every=5", "diagnostics.every=5"), recorder=rec)
    assert result.status == "completed", result.error
    assert rec.losses() == plain.losses()
    assert [(s, m) for s, m, _, _ in rec.sharpness_values] == [(5, "logit"), (10, "logit")]
    assert all(v > 0 for _, _, v, _ in rec.sharpness_values)
    sites = {(site, name) for _, site, name, _ in rec.diagnostic_rows}
    assert ("model.layers.0.self_attn.q_proj/fwd_x", "cast_error") in sites
    assert ("model.layers.0.mlp.down_proj.weight", "grad_cosine") in sites and ("model", "logit_max") in sites
    assert ("model.embed_tokens.weight", "update_ratio") in sites


def test_second_order_sharpness_measures_an_hf_model():
    model = build_model(_cfg("precision=fp8"))
    batch = tuple(torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    before = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    value = measure(model, batch, "hessian", {"batch_size": 2, "precision": "fp32", "iters": 5, "tol": 1e-3})["hessian"]
    assert math.isfinite(value) and value != 0  # double backward through HF's attention (the math kernel)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_the_memory_estimate_reads_the_hf_sizes():
    from omegaconf import OmegaConf

    from precisionlab.config import memory_shortfall
    from precisionlab.train.hf import step_bytes

    cfg = validate(compose_train("model=hf_small", micro=False))
    model = OmegaConf.to_container(cfg.model)
    n_params = build_model(cfg).num_params()
    assert step_bytes(model, 1, 1) >= 16 * n_params  # weights, gradients, two AdamW moments in fp32
    assert step_bytes(model, 2, 64) > step_bytes(model, 1, 64)
    assert memory_shortfall(model, 16, 64, "cpu") is None
    assert "GiB, more than the" in memory_shortfall(model, 10**7, 64, "cpu")


@pytest.mark.parametrize("overrides, fragment", [
    (["model.hf.arch=mamba"], "model.hf.arch must be one of llama, gpt2, qwen2"),
    (["model.hf.hidden_sise=64"], "Could not override 'model.hf.hidden_sise'"),  # a key the preset lacks: +model.hf...
    (["+model.hf.hidden_sise=64"], "model.hf.hidden_sise is not a config key of LlamaConfig (model.hf.arch=llama); it takes "),
    (["model.hf.num_attention_heads=3"], "model.hf.hidden_size (32) must be divisible by model.hf.num_attention_heads; got 3"),
    (["+model.hf.num_key_value_heads=3"], "model.hf.num_key_value_heads must divide model.hf.num_attention_heads (2); got 3"),
    (["+model.hf.vocab_size=300"], "model.hf.vocab_size is set from model.vocab_size for model.arch=hf; set that instead"),
    (["model.hf.attn_implementation=flash"], "model.hf.attn_implementation must be one of sdpa, eager; got 'flash'"),
    (["model.n_embd=64"], "model.n_embd is not read by model.arch=hf (its sizes are model.hf's keys"),
    (["model.arch=llama"], "model.hf is read only with model.arch=hf"),
    (["precision=fp8", "precision.exclude=[lm_head,model.*]"], "precision=fp8 casts no layer of this model"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, overrides, fragment):
    result = CliRunner().invoke(app, ["train", *HF_MICRO, *overrides, f"store.path={tmp_path / 'r.db'}"])
    one_line_exit_2(result, fragment)
    assert list(tmp_path.iterdir()) == []


def test_without_transformers_arch_hf_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # an import of it fails as if not installed
    with pytest.raises(ConfigError, match=r'^model.arch=hf needs transformers .*: pip install "precisionlab\[hf\]"$'):
        _cfg()


def test_importing_precisionlab_imports_no_transformers():
    code = ("import sys, precisionlab.cli, precisionlab.config, precisionlab.train.loop, precisionlab.train.hf; "
            "assert 'transformers' not in sys.modules, 'transformers imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_a_sweep_of_hf_runs_records_to_the_store_and_report_and_sharpness_read_it(tmp_path):
    """precisionlab sweep (fp32 and bf16 of the micro HF Llama) -> the store -> sharpness and report."""
    env = {**os.environ, "PYTHONPATH": ""}
    store = tmp_path / "r.db"
    args = ["sweep", "sweep=fp4", "precision=fp32,bf16", "optim.lr=3e-3", "seed=0", "sweep.name=hf", *HF_MICRO,
            f"store.path={store}", "train.checkpoint_steps=[10]", f"train.checkpoint_dir={tmp_path / 'ck'}"]
    proc = subprocess.run([CLI, *args], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    runs = ResultsStore(store).runs(sweep="hf")
    assert len(runs) == 2 and set(runs.status) == {"completed"}
    assert {c["model"]["hf"]["arch"] for c in runs.config} == {"llama"}
    proc = subprocess.run([CLI, "sharpness", "--store", str(store), "--metric", "logit", "--device", "cpu"],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    sharpness = ResultsStore(store).sharpness()
    assert len(sharpness) == 2 and (sharpness.value > 0).all()
    proc = subprocess.run([CLI, "report", "--store", str(store), "--sweep", "hf", "--out", str(tmp_path / "rep")],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and (tmp_path / "rep" / "loss_curves.png").stat().st_size > 0
