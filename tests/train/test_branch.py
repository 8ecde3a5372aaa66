"""Branching runs (init.parent=RUN_ID@STEP): a run that starts from another run's checkpoint with a
config of its own. Through `train.loop.run` (the curve; what is loaded from the checkpoint and what
from the config), the store, and the console script: `precisionlab train`, `sweep` and `report`;
bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from helpers import MICRO, MemoryRecorder, compose_train
from helpers.store import make_config, record
from precisionlab.analysis.report import build
from precisionlab.cli import app
from precisionlab.config import ConfigError, validate
from precisionlab.numerics.cast import quantize_scaled
from precisionlab.quant.linear import QuantLinear
from precisionlab.store import ResultsStore, run_id
from precisionlab.run.job import recorded_run
from precisionlab.train.branch import load_state
from precisionlab.train.checkpoint import build_model
from precisionlab.train.loop import run
from precisionlab.train.optim import build_optimizer
from precisionlab.train.rundir import RunDirRecorder

CLI = str(Path(sys.executable).with_name("precisionlab"))
CKPT = "train.checkpoint_steps=[4,10]"  # the parent's branch point and the last step (to compare final states)


def _parent(tmp_path, *overrides):
    """A parent run of 10 steps -> (its id, its result, its recorder)."""
    cfg = validate(compose_train(*overrides, CKPT, f"train.checkpoint_dir={tmp_path / 'parent'}"))
    rec = MemoryRecorder()
    return run_id(cfg), run(cfg, recorder=rec), rec


def _branch(tmp_path, parent, *overrides):
    """A branch of `parent` (_parent's) at step 4 -> (its result, its recorder)."""
    parent_id, result, _ = parent
    rec = MemoryRecorder()
    cfg = compose_train(*overrides, CKPT, f"train.checkpoint_dir={tmp_path / 'branch'}", f"init.parent={parent_id}@4")
    return run(cfg, recorder=rec, resume_from=dict(result.checkpoints)[4]), rec


@pytest.mark.parametrize("precision", [
    ["precision=fp32"],
    ["precision=mask", "precision.format=e5m2", "precision.rounding=stochastic"],  # the layers' call counts
    ["precision=fp8_delayed", "precision.delayed.history_len=3"],                  # the amax histories
    ["precision=msamp_o2"],                                                         # FP8/FP16 AdamW moments
])
def test_an_unchanged_branch_continues_its_parent_bit_for_bit(tmp_path, precision):
    parent = _parent(tmp_path, *precision)
    (parent_id, straight, rec_straight), (branch, rec) = parent, _branch(tmp_path, parent, *precision)
    assert branch.status == "completed" and rec.losses()[0][0] == 5
    assert rec.losses() == rec_straight.losses()[4:]
    assert rec.losses("val") == [(s, v) for s, v in rec_straight.losses("val") if s > 4]
    for key in ("initial_loss", "final_val_loss", "min_val_loss", "final_train_loss", "spikes", "steps_done"):
        assert getattr(branch, key) == getattr(straight, key), key
    assert (rec.meta["parent_run_id"], rec.meta["branch_step"], rec.meta["start_step"]) == (parent_id, 4, 4)
    ours, theirs = (torch.load(dict(r.checkpoints)[10], weights_only=True) for r in (branch, straight))
    for key, value in theirs["model"].items():  # weights, call counts, amax histories
        assert torch.equal(ours["model"][key], value) if torch.is_tensor(value) else ours["model"][key] == value, key
    for index, moments in theirs["optimizer"]["state"].items():
        assert all(torch.equal(ours["optimizer"]["state"][index][k], v) for k, v in moments.items()), index


def test_a_changed_branch_differs_from_its_branch_point_on(tmp_path):
    parent = _parent(tmp_path)
    _, straight, rec_straight = parent
    faster, rec_faster = _branch(tmp_path, parent, "optim.lr=1e-2")
    bf16, rec_bf16 = _branch(tmp_path, parent, "precision=bf16")
    for result, rec in ((faster, rec_faster), (bf16, rec_bf16)):
        assert result.status == "completed" and [s for s, _ in rec.losses()] == list(range(5, 11))
        assert result.initial_loss == straight.initial_loss  # the parent's: the same divergence bound
    # step 5's loss is the checkpoint's weights on the checkpoint's next batch: only the update after it uses the new lr
    assert rec_faster.losses()[0] == rec_straight.losses()[4]
    assert all(a != b for a, b in zip(rec_faster.losses()[1:], rec_straight.losses()[5:]))
    assert all(a != b for a, b in zip(rec_bf16.losses(), rec_straight.losses()[4:]))  # bf16 forward from step 5


def _loaded(state, *overrides):
    """A model and AdamW built for the branch config `overrides`, `state` loaded -> (model, optimizer, batch generator)."""
    cfg = validate(compose_train(*overrides))
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    optimizer, batches = build_optimizer(model, cfg.optim), torch.Generator().manual_seed(cfg.seed)
    load_state(state, cfg, model, optimizer, batches, torch.device("cpu"))
    return model, optimizer, batches


def _weights(model_state):
    return {k: v for k, v in model_state.items() if not k.endswith(("_extra_state", "amax_history", "delayed_scale"))}


def test_what_a_branch_takes_from_the_checkpoint_and_what_from_its_config(tmp_path):
    """Weights, moments, call counts from the checkpoint; AdamW's settings, moment formats and the
    module swap from the branch's config; module state where its shape fits; RNG while the seed stays."""
    _, parent, _ = _parent(tmp_path, "precision=fp8_delayed", "precision.delayed.history_len=3")
    state = torch.load(dict(parent.checkpoints)[4], weights_only=True)

    model, optimizer, batches = _loaded(state, "precision=bf16", "optim.weight_decay=0", "optim.betas=[0.8,0.9]",
                                        "optim.exp_avg_format=e4m3fn", "seed=1")
    mine = model.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in _weights(state["model"]).items())
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    counts = {name: state["model"].get(f"{name}._extra_state", {"calls": 0})["calls"] for name in layers}
    assert counts["lm_head"] == 0 and sum(c > 0 for c in counts.values()) == len(layers) - 1  # fp8_delayed kept lm_head fp32
    assert all(m.calls == counts[name] for name, m in layers.items())  # carried; a layer the parent did not cast starts at 0
    assert not any(k.endswith("amax_history") for k in mine)  # bf16 keeps no delayed-scaling state
    assert [(g["weight_decay"], g["betas"]) for g in optimizer.param_groups] == [(0.0, (0.8, 0.9))] * 2
    loaded = optimizer.state_dict()["state"]
    for index, saved in state["optimizer"]["state"].items():  # the parent's fp32 moments, cast as this run stores them
        assert torch.equal(loaded[index]["exp_avg"], quantize_scaled(saved["exp_avg"], "e4m3fn"))
        assert torch.equal(loaded[index]["exp_avg_sq"], saved["exp_avg_sq"])
        assert torch.equal(loaded[index]["step"], saved["step"])
    assert not torch.equal(batches.get_state(), state["rng"]["batches"])  # another seed: its own batch order

    for history_len, carried in ((3, True), (5, False)):
        model, _, batches = _loaded(state, "precision=fp8_delayed", f"precision.delayed.history_len={history_len}")
        for name, buffer in model.named_buffers():
            if name.endswith("amax_history"):  # the parent's amaxes; a new length starts empty
                assert torch.equal(buffer, state["model"][name]) if carried else not buffer.any(), name
                assert carried or state["model"][name].any()
            if name.endswith("delayed_scale"):  # one per operand whatever the length: carried
                assert torch.equal(buffer, state["model"][name]), name
        assert torch.equal(batches.get_state(), state["rng"]["batches"])  # the parent's seed: its batch order


@pytest.mark.parametrize("override, expected", [
    ("model.n_embd=64", "shapes differ (checkpoint vs this run): blocks.0.attn.c_attn.bias [96] vs [192]"),
    ("model.qk_norm=true", "the checkpoint lacks blocks.0.attn.k_norm.bias, blocks.0.attn.k_norm.weight"),
])
def test_a_model_that_does_not_fit_the_checkpoint_is_one_line(tmp_path, override, expected):
    parent = _parent(tmp_path)
    with pytest.raises(ConfigError) as err:
        _branch(tmp_path, parent, override)
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert "not the model's shape" in str(err.value)


def test_a_branch_needs_its_parents_checkpoint():
    with pytest.raises(ConfigError, match="pass its path as resume_from"):
        run(compose_train("init.parent=0123456789abcdef@4"))


@pytest.mark.parametrize("value, expected", [
    ("abc@4", "init.parent must be RUN_ID@STEP (a run's 16-hex-digit id, @, a checkpoint step >= 1)"),
    ("0123456789abcde@4", "got '0123456789abcde@4'"),  # 15 digits: a prefix is no id
    ("0123456789ABCDEF@4", "init.parent must be RUN_ID@STEP"),
    ("0123456789abcdef@0", "init.parent must be RUN_ID@STEP"),
    ("0123456789abcdef", "init.parent must be RUN_ID@STEP"),
    ("0123456789abcdef@10", "init.parent's step must be below train.steps (10): a branch trains the steps after it; "
                            "got '0123456789abcdef@10'"),
])
def test_a_malformed_parent_is_a_config_error(value, expected):
    with pytest.raises(ConfigError) as err:
        validate(compose_train(f"init.parent={value}"))
    assert expected in str(err.value)


def test_the_store_records_parent_and_branch_step(tmp_path):
    store = ResultsStore(tmp_path / "r.db")
    fresh, branch = make_config(), make_config(init={"parent": "0123456789abcdef@5"})
    ids = store.register_runs([fresh, branch])
    runs = store.runs().set_index("run_id")
    assert runs.parent_run_id[ids[1]] == "0123456789abcdef" and runs.branch_step[ids[1]] == 5
    assert runs.parent_run_id.isna()[ids[0]] and runs.branch_step.isna()[ids[0]]
    assert run_id(fresh) != run_id(branch)


# ---- through the console script: a parent in a results store, branches from it


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A results store holding a bf16 parent (checkpoint at step 4), two runs that wrote one checkpoint
    folder (the first one's step-4 file holds the second), and a run whose checkpoint file is gone."""
    root = tmp_path_factory.mktemp("stored")
    db = root / "results.db"
    store = ResultsStore(db)
    keep = ["precision=bf16", "train.checkpoint_steps=[4]"]  # the parent's config, as a branch repeats it
    ids = []
    for name, overrides in (("parent", [f"train.checkpoint_dir={root / 'parent'}"]),
                            ("first", ["train.steps=4", "seed=1", f"train.checkpoint_dir={root / 'shared'}"]),
                            ("second", ["train.steps=4", "seed=2", f"train.checkpoint_dir={root / 'shared'}"])):
        cfg = validate(compose_train(*keep, *overrides))
        assert recorded_run(cfg, store, RunDirRecorder(root / name)).status == "completed"
        ids.append(run_id(cfg))
    first, second = (store.checkpoints(rid).path.iloc[0] for rid in ids[1:])
    assert first != second  # one train.checkpoint_dir, a folder per run: no collision by default
    shutil.copyfile(second, first)  # what an earlier version, or a copy by hand, did: the second's file in the first's place
    gone = record(store, make_config(), checkpoint_every=4)  # rows naming checkpoint files never written
    store.close()
    return SimpleNamespace(db=db, parent=ids[0], overwritten=ids[1], overwriter=ids[2], gone=gone,
                           overrides=[*MICRO, "train.checkpoint_steps=[4]", f"store.path={db}"])  # a branch's, but precision


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], cwd=cwd, capture_output=True, text=True, env=os.environ.copy(), timeout=300)


def _train_curve(store: ResultsStore, rid: str) -> list[tuple[int, float]]:
    m = store.metrics(rid, split="train")
    return list(zip(m.step, m.loss))


@pytest.mark.slow
def test_precisionlab_train_branches_from_the_store(stored, tmp_path):
    proc = _cli(tmp_path, "train", "precision=bf16", *stored.overrides, f"init.parent={stored.parent}@4")
    assert proc.returncode == 0, proc.stderr
    store = ResultsStore(stored.db)
    runs = store.runs().set_index("run_id")
    (branch,) = [rid for rid in runs.index if runs.parent_run_id[rid] == stored.parent]
    assert runs.branch_step[branch] == 4 and runs.status[branch] == "completed"
    assert _train_curve(store, branch) == _train_curve(store, stored.parent)[4:]  # unchanged config: bit for bit
    assert runs.initial_loss[branch] == runs.initial_loss[stored.parent]
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    meta = json.loads((run_dir / "run.json").read_text())
    assert (meta["parent_run_id"], meta["branch_step"], meta["run_id"]) == (stored.parent, 4, branch)
    assert meta["config"]["init"]["parent"] == f"{stored.parent}@4"


@pytest.mark.slow
def test_a_sweep_of_branches_and_its_report(stored, tmp_path, monkeypatch):
    # sweep=fp4 (bf16 and MX presets) with its grid replaced: two precisions from one branch point;
    # its checkpoint_every=100 changes nothing in 10 steps, so the bf16 branch repeats its parent
    proc = _cli(tmp_path, "sweep", "sweep=fp4", "precision=bf16,mxfp8", "optim.lr=3e-3", "seed=0", "sweep.name=switch",
                *stored.overrides, f"init.parent={stored.parent}@4")
    assert proc.returncode == 0, proc.stderr
    store = ResultsStore(stored.db)
    runs = store.runs(sweep="switch")
    runs = runs.set_index(runs.config.map(lambda c: c["precision"]["name"]))
    assert sorted(runs.index) == ["bf16", "mxfp8"] and set(runs.status) == {"completed"}
    assert set(runs.parent_run_id) == {stored.parent} and set(runs.branch_step) == {4}
    parent = _train_curve(store, stored.parent)
    assert _train_curve(store, runs.run_id["bf16"]) == parent[4:]
    mx = _train_curve(store, runs.run_id["mxfp8"])
    assert [s for s, _ in mx] == list(range(5, 11)) and all(a != b for a, b in zip(mx, parent[4:]))

    report = build(store, "switch")
    assert set(report.runs.initial_loss) == {parent[0][1]}  # the parent's step 1, not the branch's step 5
    for rid in runs.run_id:
        lead = report.parent_curves[report.parent_curves.run_id == rid]
        assert list(zip(lead.step, lead.loss)) == parent[:4]
    assert any("branch from another run's checkpoint" in note for note in report.notes)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["report", "--store", str(stored.db), "--sweep", "switch", "--out", "rep"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "rep" / "loss_curves.png").stat().st_size > 0 and "init.parent" in result.output


def _rows(db: Path) -> tuple:
    store = ResultsStore(db)
    try:
        return sorted(store.runs().run_id), sorted(store.sweeps().name), len(store.metrics())
    finally:
        store.close()


BAD = [  # (overrides after the parent's, what the line says)
    (["init.parent=3f9a@4"], "init.parent must be RUN_ID@STEP"),
    (["init.parent={parent}@10"], "init.parent's step must be below train.steps (10)"),
    (["init.parent=0123456789abcdef@4"], "has no run 0123456789abcdef (a run's id: run_id in its run.json"),
    (["init.parent={parent}@3"], "run {parent} has no stored checkpoint at step 3; it has some at steps 4"),
    (["init.parent={gone}@4"], "/ckpt/{gone}/4.pt of run {gone} at step 4 is gone"),
    (["init.parent={overwritten}@4"], "holds run {overwriter} at step 4, not run {overwritten} at step 4 (overwritten by "
                                      "another run writing the same train.checkpoint_dir?)"),
    (["init.parent={parent}@4", "model.n_embd=64"], "the checkpoint's weights do not fit this run's model (shapes differ"),
    (["init.parent={parent}@4", "store.path=elsewhere.db"], "elsewhere.db: does not exist"),
]


@pytest.mark.parametrize("command", ["train", "sweep"])
@pytest.mark.parametrize("overrides, expected", BAD + [(["init.parent={parent}@4", "store.path=null"], "store.path is null")])
def test_a_bad_parent_is_one_line_exit_2_and_nothing_written(stored, tmp_path, monkeypatch, command, overrides, expected):
    names = {"parent": stored.parent, "gone": stored.gone, "overwritten": stored.overwritten,
             "overwriter": stored.overwriter}
    monkeypatch.chdir(tmp_path)
    before = _rows(stored.db)
    one_point = ["sweep=fp4", "optim.lr=3e-3", "seed=0"] if command == "sweep" else []  # its grid replaced: one run
    result = CliRunner().invoke(app, [command, *one_point, *stored.overrides, *(o.format(**names) for o in overrides)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected.format(**names) in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == [] and _rows(stored.db) == before
