"""Numerical diagnostics (precisionlab.train.diagnostics, `diagnostics.every`).

Oracles: the formats' largest finite and smallest subnormal values come from ml_dtypes; the
saturated and flushed fractions and cast errors are written out from their definitions on
hand-built tensors whose sums are exact in float64 (so any summation order gives the same
bits); block and delayed scales are written out from the OCP MX and Transformer Engine rules.
Gradient fidelity of a quantized run is recomputed from its checkpoint with plain autograd.
"""

from __future__ import annotations

import csv
import math

import ml_dtypes
import numpy as np
import pytest
import torch

from helpers import MemoryRecorder
from precisionlab.config import validate
from precisionlab.numerics.blocks import parse_format
from precisionlab.quant.operands import DelayedScaling, OperandCast, observing_casts
from precisionlab.store import ResultsStore, run_id
from precisionlab.train.checkpoint import build_model, load_checkpoint
from precisionlab.train.data import get_batch, load_dataset
from precisionlab.train.diagnostics import CastSites, _synced
from precisionlab.train.loop import run
from precisionlab.train.sharpness import fp32_twin
from precisionlab.train.recorder import Tee
from precisionlab.train.rundir import RunDirRecorder

E4M3_MAX = float(ml_dtypes.finfo(ml_dtypes.float8_e4m3fn).max)  # 448
E4M3_TINY = float(ml_dtypes.finfo(ml_dtypes.float8_e4m3fn).smallest_subnormal)  # 2^-9
E3M2_TINY = float(ml_dtypes.finfo(ml_dtypes.float6_e3m2fn).smallest_subnormal)  # 2^-4, as e3m2's


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _observed(cast: OperandCast, x: torch.Tensor, **kw) -> dict[str, float]:
    """{name: value} of the one site that casting x through a cast observer reports."""
    sites = CastSites()
    with observing_casts(sites.observe):
        cast(x, site=("layer", "fwd_x"), **kw)
        cast(x, **kw)  # a cast that names no site is not observed
    rows = _synced(sites.rows())
    assert {site for site, _, _ in rows} == {"layer/fwd_x"}
    return {name: value for _, name, value in rows}


def _expected(x: list[float], q: list[float], saturated: int) -> dict[str, float]:
    nonzero = [(a, b) for a, b in zip(x, q) if a != 0]
    err2, x2 = math.fsum((b - a) ** 2 for a, b in zip(x, q)), math.fsum(a * a for a in x)
    return {"saturated": saturated / len(x), "flushed": sum(b == 0 for _, b in nonzero) / len(nonzero),
            "cast_error": math.sqrt(err2 / x2)}


def test_element_cast_saturation_flush_and_error_by_hand():
    x = [500.0, -1000.0, E4M3_MAX, 1.0, 0.0, E4M3_TINY / 4, 3.0, 0.375]
    q = [E4M3_MAX, -E4M3_MAX, E4M3_MAX, 1.0, 0.0, 0.0, 3.0, 0.375]  # saturating round to nearest even, by hand
    cast = OperandCast(parse_format("e4m3fn"))
    assert cast(torch.tensor(x)).tolist() == q
    saturated = sum(abs(v) > E4M3_MAX for v in x)  # 500 and -1000: 2 of 8
    assert _observed(cast, torch.tensor(x)) == _expected(x, q, saturated)  # flushed: E4M3_TINY / 4, 1 of 7


def test_block_cast_saturates_where_the_block_scale_leaves_no_room():
    """OCP MX (mxfp8: e4m3fn elements, 32-element blocks, E8M0 scale 2^(floor(log2 amax) - 8)): an
    amax in (448, 512) * 2^k does not fit below 448 * 2^k and is clipped."""
    rest = [float(v) for v in range(1, 30)]
    x = torch.tensor([[480.0, 460.0, 300.0, *rest], [1000.0, 900.0, 890.0, *rest]])  # (2, 32): one block per row
    saturated = 0
    for block in x.tolist():
        scale = 2.0 ** (math.frexp(max(map(abs, block)))[1] - 1 - 8)  # floor(log2 amax) - emax(e4m3fn)
        saturated += sum(abs(v) / scale > E4M3_MAX for v in block)
    assert saturated == 4  # 480, 460 (scale 1); 1000, 900 (scale 2: 500, 450 > 448; 890 -> 445 fits)
    cast = OperandCast(parse_format("mxfp8"))
    q = cast(x, axis=-1)
    assert _observed(cast, x, axis=-1) == _expected(x.flatten().tolist(), q.flatten().tolist(), saturated)
    # along axis 0 of the transpose: the same blocks
    assert _observed(cast, x.t().contiguous(), axis=0)["saturated"] == saturated / x.numel()


def test_delayed_scaling_saturates_when_the_amax_outgrows_its_history():
    """Transformer Engine's delayed scaling: the scale 2^floor(log2(448 / amax_history)) comes from an
    amax of 100 in the history, so 200 * 4 = 800 clips; 2^-14 * 4 = 2^-12 is below half of e4m3fn's
    smallest subnormal and flushes."""
    cast = OperandCast(parse_format("e4m3fn"), scaling="delayed", delayed=DelayedScaling(history_len=4, algo="max", margin=0))
    x = [200.0, 50.0, 2.0**-14, 0.0]
    scale = 2.0 ** math.floor(math.log2(E4M3_MAX / 100))
    assert scale == 4 and 2.0**-14 * scale < E4M3_TINY / 2
    history = (torch.tensor([100.0, 0.0, 0.0, 0.0]), torch.ones(1))
    q = cast(torch.tensor(x), history=tuple(h.clone() for h in history)).tolist()
    assert q == [E4M3_MAX / scale, 48.0, 0.0, 0.0]  # 50 * 4 = 200: halfway between 192 and 208, to even 192
    saturated = sum(abs(v) * scale > E4M3_MAX for v in x)
    assert _observed(cast, torch.tensor(x), history=history) == _expected(x, q, saturated)
    assert history[0][0] == 200  # the observer saw the cast the run made (its history moved on)


def _diagnosed(train_cfg, *overrides, every=5):
    rec = MemoryRecorder()
    result = run(train_cfg(*overrides, f"diagnostics.every={every}"), recorder=rec)
    rows = {}
    for step, site, name, value in rec.diagnostic_rows:
        rows.setdefault(name, {})[(step, site)] = value
    return result, rec, rows


def _initial_model(train_cfg):
    """The micro run's model at step 0 (seed 0, as `run` builds it)."""
    torch.manual_seed(0)
    return build_model(validate(train_cfg()))


def test_gradient_fidelity_is_exact_without_casts(train_cfg):
    """fp32: the fp32 pass is the run's own backward replayed (same batch, dropout masks, z-loss)."""
    result, _, rows = _diagnosed(train_cfg, "precision=fp32", "model.dropout=0.1", "optim.z_loss=1e-3")
    assert result.status == "completed"
    params = {site for _, site in rows["grad_cosine"]}
    assert "model" in params and "blocks.0.attn.c_attn.weight" in params and "wte.weight" in params
    assert {step for step, _ in rows["grad_cosine"]} == {5, 10}
    assert set(rows["grad_cosine"].values()) == {1.0} and set(rows["grad_error"].values()) == {0.0}
    assert "saturated" not in rows  # nothing is cast


def test_gradient_fidelity_of_a_quantized_run_against_its_checkpoint(train_cfg, tmp_path):
    """Step 5's cosine and error, recomputed from the step-4 checkpoint: the quantized model's and its
    fp32 twin's gradients of step 5's batch (the checkpoint's batch generator draws it)."""
    result, _, rows = _diagnosed(train_cfg, "precision=mxfp8", "train.checkpoint_steps=[4]")
    model, cfg, _, state = load_checkpoint(tmp_path / "checkpoints" / "step_0000004.pt")
    generator = torch.Generator()
    generator.set_state(state["rng"]["batches"])
    x, y = get_batch(load_dataset(cfg.data)[0], cfg.train.batch_size, cfg.train.seq_len, generator)
    grads = []
    for net in (model.train(), fp32_twin(model).train()):
        net.zero_grad()
        net(x, y)[1].backward()
        grads.append({name: p.grad.double().numpy().ravel() for name, p in net.named_parameters()})
    g_q, g = (np.concatenate(list(gs.values())) for gs in grads)
    cosine = g_q @ g / np.sqrt((g_q @ g_q) * (g @ g))
    assert rows["grad_cosine"][(5, "model")] == pytest.approx(cosine, rel=1e-9, abs=0)
    assert rows["grad_error"][(5, "model")] == pytest.approx(np.linalg.norm(g_q - g) / np.linalg.norm(g), rel=1e-9)
    w = "blocks.1.mlp.c_fc.weight"
    assert rows["grad_error"][(5, w)] == pytest.approx(np.linalg.norm(grads[0][w] - grads[1][w]) / np.linalg.norm(grads[1][w]), rel=1e-9)
    assert 0.5 < cosine < 1 and result.status == "completed"


def test_narrow_formats_show_saturation_and_underflow_where_expected(train_cfg):
    """e3m2 without scaling (smallest subnormal 2^-4) flushes every gradient of the logits (each at
    most 1/tokens = 1/64 < 2^-5) and most initial weights (std 0.02); e2m2 activations (largest
    finite 3.5) clip the unit-RMS outputs of the norms, never the tiny gradients."""
    _, _, rows = _diagnosed(train_cfg, "precision.format=e3m2", "precision.x=e2m2", "precision.scaling=none",
                            every=1)
    flushed, saturated = rows["flushed"], rows["saturated"]
    assert flushed[(1, "lm_head/dgrad_g")] == 1.0
    w = _initial_model(train_cfg).blocks[0].mlp.c_fc.weight.detach()
    assert flushed[(1, "blocks.0.mlp.c_fc/fwd_w")] == (w.abs() <= E3M2_TINY / 2).sum().item() / w.numel()
    for site in ("blocks.0.attn.c_attn/fwd_x", "blocks.0.mlp.c_fc/fwd_x", "lm_head/fwd_x"):
        # a unit-RMS activation beyond 3.5 is a tail event (~1 in 2000 for Gaussian entries): it shows
        # within the run's steps, not necessarily in step 1's batch
        assert max(v for (_, s), v in saturated.items() if s == site) > 0, site
    assert all(v == 0 for (_, site), v in saturated.items() if site.endswith(("_g", "_w")))


CURVE_PRESETS = ["precision=fp32 model.dropout=0.1", "precision=nvfp4", "precision=fp8_delayed optim.z_loss=1e-3"]


@pytest.mark.parametrize("preset", CURVE_PRESETS)
def test_diagnostics_leave_the_curve_and_the_state_unchanged(train_cfg, tmp_path, preset):
    """Stochastic rounding call counts, delayed-scaling histories, weights, optimizer state, RNG:
    the run with diagnostics every 3 steps ends bit for bit where the plain run does."""
    recs, states = [], []
    for extra in ([], ["diagnostics.every=3"]):
        rec = MemoryRecorder()
        ck = tmp_path / f"ck{len(extra)}"
        assert run(train_cfg(*preset.split(), *extra, "train.checkpoint_steps=[10]", f"train.checkpoint_dir={ck}"),
                   recorder=rec).status == "completed"
        recs.append([(s, split, {k: v for k, v in m.items() if k != "elapsed"}) for s, split, m in rec.rows])
        states.append(torch.load(ck / "step_0000010.pt", weights_only=True))
    assert recs[0] == recs[1]
    plain, measured = states
    assert plain["model"].keys() == measured["model"].keys()
    for key, value in plain["model"].items():
        assert torch.equal(value, measured["model"][key]) if isinstance(value, torch.Tensor) else value == measured["model"][key]
    assert torch.equal(plain["rng"]["torch"], measured["rng"]["torch"])
    for a, b in zip(plain["optimizer"]["state"].values(), measured["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_proxies_by_hand_on_the_first_step(train_cfg):
    """Step 1 at the initial weights: the largest causal attention logit and the output logits, recomputed."""
    _, _, rows = _diagnosed(train_cfg, "precision=fp32", "diagnostics.families=[proxies]", every=1)
    assert set(rows) == {"attn_logit_max", "logit_max", "log_z", "update_ratio"}
    cfg = validate(train_cfg())
    model = _initial_model(train_cfg)
    x, y = get_batch(load_dataset(cfg.data)[0], cfg.train.batch_size, cfg.train.seq_len, torch.Generator().manual_seed(0))
    captured = {}
    model.blocks[1].attn.attend.register_forward_pre_hook(lambda _, inputs: captured.update(qk=inputs[:2]))
    with torch.no_grad():
        logits, _ = model(x, y)
    q, k = captured["qk"]
    T = q.shape[-2]
    scores = (q.double() @ k.double().transpose(-2, -1)) / math.sqrt(q.shape[-1])
    best = max(scores[b, h, i, j].item() for b in range(q.shape[0]) for h in range(q.shape[1])
               for i in range(T) for j in range(i + 1))
    assert rows["attn_logit_max"][(1, "blocks.1.attn")] == pytest.approx(best, rel=1e-6)
    assert rows["logit_max"][(1, "model")] == logits.max().item()
    assert rows["log_z"][(1, "model")] == pytest.approx(torch.logsumexp(logits.double(), -1).mean().item(), rel=1e-6)
    assert all(0 < v < 1 for (_, site), v in rows["update_ratio"].items() if site.endswith("weight"))


def test_rows_reach_the_store_and_the_run_directory(train_cfg, tmp_path):
    store = ResultsStore(tmp_path / "store.db")
    cfg = validate(train_cfg("precision=mxfp8", "diagnostics.every=5", "diagnostics.families=[casts,grad_fidelity]"))
    assert run_id(cfg) == run_id(validate(train_cfg("precision=mxfp8")))  # measured on the side: the same run
    rid = run_id(cfg)
    assert store.claim_run(rid, cfg, "s")
    memory = MemoryRecorder()
    with store.recorder(rid) as rec:
        run(cfg, recorder=Tee(rec, RunDirRecorder(tmp_path / "dir"), memory))
    df = store.diagnostics(rid)
    assert list(df.columns) == ["run_id", "step", "site", "name", "value"]
    assert sorted(set(df.step)) == [5, 10] and set(df.name) == {"saturated", "flushed", "cast_error", "grad_cosine",
                                                                "grad_error"}
    assert sorted(zip(df.step, df.site, df.name, df.value)) == sorted((s, site, n, v) for s, site, n, v in memory.diagnostic_rows)
    cosine = store.diagnostics(sweep="s", name="grad_cosine")
    assert set(cosine.name) == {"grad_cosine"} and len(cosine) == len(df[df.name == "grad_cosine"])
    with open(tmp_path / "dir" / "diagnostics.csv", newline="") as f:
        csv_rows = [(int(r["step"]), r["site"], r["name"], float(r["value"])) for r in csv.DictReader(f)]
    assert csv_rows == memory.diagnostic_rows
    assert store.claim_run(rid, cfg, "s", force=True) and store.diagnostics(rid).empty  # a forced rerun starts afresh


def test_attention_casts_are_sites_too(train_cfg):
    """With the attention matmuls cast (fp8_attention: e4m3fn q, k, p, v, e5m2 gradients, per-tensor
    scales), each of their casts is a site "<block>.attn.attend/<gemm>.<operand>"; nearest rounding to
    3 mantissa bits errs by at most half an ulp, 2^-4 of each normal value, so by at most that in norm
    (values small enough to round to subnormals could err more, but weigh little in the norm)."""
    _, _, rows = _diagnosed(train_cfg, "precision=fp8_attention", "diagnostics.families=[casts]", every=2)
    layer = "blocks.0.attn.attend"
    found = {site.split("/", 1)[1] for (_, site) in rows["cast_error"] if site.startswith(layer + "/")}
    assert {"scores.fwd_x", "scores.fwd_w", "output.fwd_x", "output.fwd_w"} <= found  # q, k, p, v
    assert {"scores.dgrad_g", "output.dgrad_g"} <= found  # dS and dy, the backward operands
    for op in ("scores.fwd_x", "scores.fwd_w", "output.fwd_w"):
        error = rows["cast_error"][(2, f"{layer}/{op}")]
        assert 0 < error <= 2**-4 and rows["saturated"][(2, f"{layer}/{op}")] == 0
