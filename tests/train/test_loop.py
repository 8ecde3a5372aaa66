"""Training runs: determinism, resume, divergence, failures, checkpoints, config checks."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

import precisionlab.train.loop as train_mod
from helpers import MemoryRecorder
from precisionlab.config import ConfigError, validate
from precisionlab.train.checkpoint import load_checkpoint
from precisionlab.train.data import load_dataset
from precisionlab.train.loop import eval_batches, lr_at, run
from precisionlab.train.outcomes import SpikeCounter


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _run(cfg, **kw):
    rec = MemoryRecorder()
    result = run(cfg, recorder=rec, **kw)
    return result, rec


def test_same_seed_same_curve_other_seed_other_curve(train_cfg):
    a, rec_a = _run(train_cfg("seed=3"))
    b, rec_b = _run(train_cfg("seed=3"))
    c, rec_c = _run(train_cfg("seed=4"))
    assert a.status == "completed" and a.steps_done == 10
    assert rec_a.losses() == rec_b.losses() and rec_a.losses("val") == rec_b.losses("val")
    assert rec_a.losses() != rec_c.losses()
    assert [s for s, _ in rec_a.losses("val")] == [5, 10]
    assert a.final_val_loss == rec_a.losses("val")[-1][1] and a.min_val_loss == min(v for _, v in rec_a.losses("val"))
    assert a.initial_loss == rec_a.losses()[0][1]
    assert rec_a.meta["data"]["fingerprint"] and rec_a.outcome["status"] == "completed"


@pytest.mark.parametrize("precision", [["precision=fp32"], ["precision=mask", "precision.format=e5m2", "precision.rounding=stochastic"],
                                       ["precision=fp8_delayed", "precision.delayed.history_len=3"],  # the amax histories resume
                                       ["precision=msamp_o2"],  # FP8/FP16 AdamW moments resume
                                       ["precision=bf16", "optim.master_format=bf16", "optim.master_rounding=stochastic"]])
def test_resume_continues_the_curve_bit_for_bit(train_cfg, tmp_path, precision):
    straight, rec_straight = _run(train_cfg(*precision, "train.checkpoint_steps=[4]", "train.checkpoint_dir=first"))
    assert [s for s, _ in straight.checkpoints] == [4]
    ckpt = straight.checkpoints[0][1]
    resumed, rec_resumed = _run(train_cfg(*precision, "train.checkpoint_dir=second"), resume_from=ckpt)
    assert rec_resumed.losses() == rec_straight.losses()[4:]
    assert rec_resumed.losses("val") == rec_straight.losses("val")
    assert resumed.final_val_loss == straight.final_val_loss and resumed.initial_loss == straight.initial_loss


def test_seeds_pair_across_precisions(train_cfg, monkeypatch):
    """The report's paired tests assume that a seed fixes the initial weights and the batch order
    whatever the precision recipe (casts, stochastic rounding, Hadamard signs, amax histories)."""
    seen = {}
    build, get_batch = train_mod.build_model, train_mod.get_batch

    def record_build(cfg, precision):
        model = build(cfg, precision)
        seen.setdefault(cfg.precision.name, {})["weights"] = {k: p.detach().clone() for k, p in model.named_parameters()}
        return model

    def record_batch(*args):
        x, y = get_batch(*args)
        seen[current]["batches"].append(x)
        return x, y

    monkeypatch.setattr(train_mod, "build_model", record_build)
    monkeypatch.setattr(train_mod, "get_batch", record_batch)
    for current in ("fp32", "mask", "mxfp8", "nvfp4", "fp8_delayed", "msamp_o2"):
        seen[current] = {"batches": []}
        result, _ = _run(train_cfg(f"precision={current}", "seed=5", "train.steps=3", "train.eval_every=0"))
        assert result.status == "completed", result.error
    reference = seen["fp32"]
    for name, got in seen.items():
        assert got["weights"].keys() == reference["weights"].keys(), name
        assert all(torch.equal(got["weights"][k], w) for k, w in reference["weights"].items()), name
        assert len(got["batches"]) == len(reference["batches"]) >= 3, name  # validation batches, then 3 training ones
        assert all(torch.equal(a, b) for a, b in zip(got["batches"], reference["batches"])), name


def test_huge_learning_rate_diverges_and_an_early_stop_rule_stops_it(train_cfg):
    # the default (train.divergence.rule=none) trains to the end and judges there: the run ended above ln V
    result, rec = _run(train_cfg("optim.lr=30", "train.steps=40", "optim.grad_clip=0"))
    assert result.status == "diverged" and result.steps_done == 40 and rec.outcome["status"] == "diverged"
    losses = [loss for _, loss in rec.losses()]
    assert np.median(losses[-20:]) > math.log(256) and result.diverged_step < 40
    # rule=median stops it once most of the last 5 losses are above ln V
    stopped, rec = _run(train_cfg("optim.lr=30", "train.steps=40", "optim.grad_clip=0", "train.divergence.rule=median",
                                  "train.divergence.window=5"))
    assert stopped.status == "diverged" and stopped.steps_done == stopped.diverged_step < 40
    assert sum(loss > math.log(256) for _, loss in rec.losses()[-5:]) >= 3


def test_nan_loss_diverges_without_raising(train_cfg, monkeypatch):
    real_build = train_mod.build_model

    def build_poisoned(cfg, precision):
        model = real_build(cfg, precision)
        calls = {"n": 0}

        def poison(module, args, output):
            calls["n"] += 1
            return output * float("nan") if calls["n"] == 3 else output

        model.lm_head.register_forward_hook(poison)
        return model

    monkeypatch.setattr(train_mod, "build_model", build_poisoned)
    result, rec = _run(train_cfg())
    assert result.status == "diverged" and result.diverged_step == 3 and result.steps_done == 3
    assert math.isnan(rec.losses()[-1][1])


def test_an_exception_during_training_is_a_failed_run(train_cfg, monkeypatch):
    real_get_batch = train_mod.get_batch
    calls = {"n": 0}

    def flaky(*args):
        calls["n"] += 1
        if calls["n"] == 6:  # 2 eval batches, then 4 train steps
            raise RuntimeError("disk on fire")
        return real_get_batch(*args)

    monkeypatch.setattr(train_mod, "get_batch", flaky)
    result, rec = _run(train_cfg())
    assert result.status == "failed" and "disk on fire" in result.error
    assert result.steps_done == 3 and rec.outcome["status"] == "failed"


def test_checkpoint_rebuilds_the_model(train_cfg):
    result, _ = _run(train_cfg("precision=mask", "precision.format=e8m3", "train.checkpoint_every=5"))
    assert [s for s, _ in result.checkpoints] == [5, 10]
    ckpt = load_checkpoint(result.checkpoints[-1][1])
    assert ckpt.step == 10 and ckpt.cfg.precision.format == "e8m3" and not ckpt.model.training
    assert type(ckpt.model.lm_head).__name__ == "QuantLinear"
    _, val, meta = load_dataset(ckpt.cfg.data)
    assert meta["fingerprint"] == ckpt.state["data"]["fingerprint"]
    with torch.no_grad():
        losses = [ckpt.model(x, y)[1].item() for x, y in eval_batches(val, ckpt.cfg)]
    assert sum(losses) / len(losses) == result.final_val_loss


def test_default_recorder_writes_the_run_directory(train_cfg, tmp_path):
    result = run(train_cfg("train.checkpoint_steps=[10]"))
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [int(r["step"]) for r in train_rows] == list(range(1, 11))
    assert float(train_rows[-1]["loss"]) == result.final_train_loss
    assert float(train_rows[-1]["tokens"]) == 10 * 4 * 16
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["status"] == "completed" and record["steps_done"] == 10
    assert record["config"]["train"]["steps"] == 10 and record["data"]["source"] == "stdlib"
    assert record["checkpoints"][0]["step"] == 10 and (tmp_path / "checkpoints" / "step_0000010.pt").is_file()
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("checkpoints/*.tmp"))


@pytest.mark.parametrize("override, message", [
    ("optim.lr=-1", r"optim\.lr must be a positive number"),
    ("optim.lr=0", r"optim\.lr"),
    ("precision.format=e9m3", r"precision\.format: .*e9m3.*accepted"),
    ("precision.grad=bf17", r"precision\.grad"),
    ("model.n_head=3", "divisible"),
    ("train.steps=0", r"train\.steps"),
    ("device=tpu", "device"),
    ("optim.exp_avg_format=e4m3x", r"optim\.exp_avg_format: .*e4m3x"),
    ("optim.state_format=e4m3fn/b16x16/fp32", r"optim\.exp_avg_format takes an element format or 1-D blocks"),
    ("precision.weight_grad=e4m3x", r"precision\.weight_grad: "),
    ("optim.z_loss=-1", r"optim\.z_loss must be a number >= 0"),
    ("precision.accumulate.format=fp64", r"precision\.accumulate\.format: .*no wider than fp32"),
    ("precision.delayed.history_len=0", r"precision\.delayed\.history_len must be an integer >= 1"),
])
def test_config_errors_raise_before_training(train_cfg, override, message):
    """`run` takes a validated config: its callers (the CLI, the Hydra task, a sweep's job) validate first."""
    rec = MemoryRecorder()
    with pytest.raises(ConfigError, match=message):
        run(validate(train_cfg(override)), recorder=rec)
    assert rec.meta is None and rec.outcome is None


MODELS, PRECISIONS = ["tiny", "small", "gpt2_124m", "llama_120m"], ["fp32", "bf16", "mask", "fp8"]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_model_and_precision_composes(model, precision):
    from helpers import compose_train

    cfg = validate(compose_train(f"model={model}", f"precision={precision}", micro=False))
    assert cfg.model.vocab_size == 256 and cfg.model.block_size == cfg.train.seq_len
    assert cfg.precision.name == precision


@pytest.mark.parametrize("data", ["default", "text", "tokens"])
def test_every_data_source_composes(data, tmp_path):
    from helpers import compose_train

    (tmp_path / "a.txt").write_text("x" * 100)
    (tmp_path / "train.bin").write_bytes(b"\x01\x00" * 100)
    (tmp_path / "val.bin").write_bytes(b"\x01\x00" * 100)
    extra = [] if data == "default" else [f"data.path={tmp_path}"]
    cfg = validate(compose_train(f"data={data}", *extra))
    assert cfg.data.source == {"default": "stdlib", "text": "text", "tokens": "tokens"}[data]
    assert cfg.model.vocab_size == (50304 if data == "tokens" else 256)


def test_lr_schedule():
    class O:
        lr, warmup_steps, schedule, min_lr_ratio = 1.0, 10, "cosine", 0.1

    assert lr_at(1, O, 110) == 0.1 and lr_at(10, O, 110) == 1.0
    assert lr_at(60, O, 110) == pytest.approx(0.55) and lr_at(110, O, 110) == pytest.approx(0.1)
    O.schedule = "constant"
    assert lr_at(110, O, 110) == 1.0


def test_spike_counting():
    counter = SpikeCounter(z=8.0, window=5)  # a flat window: the MAD floor (1e-3 x median) sets the scale
    flags = [counter.update(x) for x in [1, 1, 1, 1, 1, 3, 3, 1, 1, 1, 5, 1.004, float("nan")]]
    assert flags == [False] * 5 + [True, True] + [False] * 3 + [True, False, False]
    assert counter.count == 2  # consecutive spike steps are one spike


def _noisy_curve(rng, steps: int = 400) -> list[float]:
    """A training curve: exponential decay towards 2.0 plus 1% Gaussian noise."""
    t = np.arange(steps)
    return list((2.0 + 3.0 * np.exp(-t / 60)) * (1 + 0.01 * rng.standard_normal(steps)))


def test_the_spike_detector_finds_planted_spikes_and_no_others():
    rng = np.random.default_rng(0)
    quiet = _noisy_curve(rng)
    counter = SpikeCounter(z=8.0, window=20)
    assert not any(counter.update(x) for x in quiet) and counter.count == 0
    planted = list(quiet)
    for start, length, rise in ((100, 3, 1.15), (250, 1, 1.15), (330, 5, 1.30)):
        for t in range(start, start + length):
            planted[t] *= rise  # a jump of 15-30%, far beyond 1% noise, far below a divergence
    counter = SpikeCounter(z=8.0, window=20)
    steps = [t for t, x in enumerate(planted) if counter.update(x)]
    assert steps == [100, 101, 102, 250, *range(330, 335)] and counter.count == 3


def test_resume_in_the_same_run_directory_keeps_the_curve(train_cfg, tmp_path):
    straight = run(train_cfg("train.checkpoint_steps=[4]"))
    with open(tmp_path / "metrics.csv") as f:
        full = list(csv.DictReader(f))
    resumed = run(train_cfg(), resume_from=straight.checkpoints[0][1])
    with open(tmp_path / "metrics.csv") as f:
        again = list(csv.DictReader(f))
    assert resumed.status == "completed"
    assert [(r["step"], r["split"], r["loss"]) for r in again] == [(r["step"], r["split"], r["loss"]) for r in full]
    with pytest.raises(ConfigError, match="does not exist"):
        run(train_cfg(), resume_from=tmp_path / "nope.pt")


def test_a_key_left_out_takes_its_schema_default_and_a_misspelt_one_is_an_error(train_cfg):
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(train_cfg())
    del cfg["train"]["spikes"]
    assert validate(cfg).train.spikes == {"z": 8.0, "window": 20}
    cfg["train"]["spikez"] = {"factor": 2.0}
    with pytest.raises(ConfigError, match=r"train\.spikez is not a config key; train takes steps, "):
        validate(cfg)


# ---- checkpoint integrity: the file names its run and step, and its content checksum is verified


def _saved(tmp_path, **state):
    from precisionlab.train.checkpoint import CHECKPOINT_FORMAT, save_checkpoint

    path = tmp_path / "c.pt"
    save_checkpoint(path, {"format": CHECKPOINT_FORMAT, "run_id": "0123456789abcdef", "step": 4,
                           "model": {"w": torch.arange(6, dtype=torch.float32)}, **state})
    return path


def test_a_checkpoint_is_read_only_as_the_run_and_step_it_holds(tmp_path):
    from precisionlab.train.checkpoint import CheckpointError, read_checkpoint

    path = _saved(tmp_path)
    assert read_checkpoint(path, run_id="0123456789abcdef", step=4)["model"]["w"].tolist() == [0, 1, 2, 3, 4, 5]
    for expected, fragment in (({"run_id": "fedcba9876543210"}, "holds run 0123456789abcdef at step 4, not run fedcba9876543210"),
                               ({"step": 5}, "holds run 0123456789abcdef at step 4, not step 5")):
        with pytest.raises(CheckpointError, match=fragment) as err:
            read_checkpoint(path, **expected)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("change", [
    lambda s: s["model"]["w"].__setitem__(2, 2.5),              # a weight
    lambda s: s.__setitem__("step", 5),                         # the step it claims
    lambda s: s.__setitem__("run_id", "fedcba9876543210"),      # the run it claims
    lambda s: s["model"].__setitem__("w", s["model"]["w"].double()),  # a dtype, same values
])
def test_a_checkpoint_changed_after_saving_is_refused_as_damaged(tmp_path, change):
    from precisionlab.train.checkpoint import CheckpointError, read_checkpoint

    path = _saved(tmp_path)
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)  # the old checksum kept: what a bit flip on disk looks like to the reader
    with pytest.raises(CheckpointError, match="is damaged: its content does not match its checksum") as err:
        read_checkpoint(path)
    assert str(path) in str(err.value)


def test_an_earlier_format_checkpoint_is_refused_in_one_line(tmp_path):
    from precisionlab.train.checkpoint import CheckpointError, read_checkpoint

    path = tmp_path / "old.pt"
    torch.save({"format": "precisionlab-checkpoint-1", "step": 4, "model": {}}, path)
    with pytest.raises(CheckpointError, match="an earlier precisionlab's checkpoint, without a run id or checksum") as err:
        read_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
