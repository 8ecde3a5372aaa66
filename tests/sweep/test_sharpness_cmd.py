"""`precisionlab sharpness` on stored checkpoints, and `sharpness.every` during training.

Oracles: the logit sharpness is recomputed from the checkpoint by brute force — the
cross-entropy at the corner of the box that raises every non-target logit and lowers the
target's, minus the cross-entropy at the logits, with torch's own cross_entropy in float64 —
not with precisionlab.train.sharpness's log-space formula.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from helpers import CLI, MemoryRecorder, compose_train
from helpers.checkpoints import flip_a_weight_bit
from precisionlab.train.sharpness import hessian_trace
from precisionlab.cli import app
from precisionlab.config import ConfigError, validate
from precisionlab.quant.linear import convert_model
from precisionlab.quant.recipe import PrecisionConfig
from precisionlab.store import ResultsStore, run_id
from precisionlab.train.checkpoint import load_checkpoint
from precisionlab.train.data import load_dataset
from precisionlab.train.loop import eval_batches, run
from precisionlab.train.sharpness import fp32_twin
from precisionlab.train.model import LM
from precisionlab.train.rundir import RunDirRecorder

SWEEP = "micro"
CHECKPOINT_STEPS = [3, 6]
ALL_METRICS = ["logit", "hessian", "trace", "keskar"]
CHEAP = ["--iters", "5", "--samples", "3", "--ascent-steps", "2", "--device", "cpu"]  # small Hessian and ascent budgets


def _micro_store(folder: Path, train_cfg) -> Path:
    """A store with sweep `micro`: an fp32 run and a mantissa-masked (e8m3) run, checkpoints at steps 3 and 6."""
    store = ResultsStore(folder / "store.db")
    store.add_sweep(SWEEP)
    for name, precision in (("fp32", ["precision=fp32"]), ("mask", ["precision=mask", "precision.format=e8m3"])):
        cfg = train_cfg(*precision, "train.steps=6", f"train.checkpoint_steps={CHECKPOINT_STEPS}",
                        f"train.checkpoint_dir={folder / name}", "optim.lr=1e-3")
        cfg = validate(cfg)
        rid = run_id(cfg)
        assert store.claim_run(rid, cfg, SWEEP)
        with store.recorder(rid) as rec:
            assert run(cfg, recorder=rec).status == "completed"
    store.close()
    return folder / "store.db"


@pytest.fixture(scope="module")
def _built(tmp_path_factory, precisionlab_cache):
    from helpers import compose_train

    folder = tmp_path_factory.mktemp("sharpness-store")
    return _micro_store(folder, compose_train)


@pytest.fixture
def store_path(_built, tmp_path) -> Path:
    """A fresh copy of the micro store (checkpoint paths stay valid: they are absolute)."""
    path = tmp_path / "store.db"
    shutil.copy(_built, path)
    return path


def _invoke(*args):
    return CliRunner().invoke(app, ["sharpness", *args])


def _rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return sorted(conn.execute("SELECT run_id, step, metric, params, value, created FROM sharpness"))


def _brute_logit_sharpness(model, x, y, eps: float) -> float:
    """Mean over the batch of 100·[CE(corner) − CE(z)]/(1 + CE(z)) on the last position, by direct evaluation."""
    with torch.no_grad():
        z = model.eval()(x)[0][:, -1, :].double()  # (B, V)
    target = y[:, -1]
    radius = eps * (z.abs() + 1)
    sign = torch.ones_like(z)
    sign[torch.arange(len(z)), target] = -1
    base = F.cross_entropy(z, target, reduction="none")
    worst = F.cross_entropy(z + sign * radius, target, reduction="none")
    return (100 * (worst - base) / (1 + base)).mean().item()


def _eval_batch(cfg, batch_size=None):
    cfg = cfg.copy()
    cfg.train.batch_size = batch_size or cfg.train.batch_size
    _, val, _ = load_dataset(cfg.data)
    return eval_batches(val, cfg)[0]


# --------------------------------------------------------------------------- the command


def test_every_checkpoint_and_metric_once_then_nothing_new(store_path):
    first = _invoke("--store", str(store_path), "--metric", "logit,hessian", "--metric", "trace", "-m", "keskar", *CHEAP)
    assert first.exit_code == 0, first.output
    store = ResultsStore(store_path)
    checkpoints = {(r.run_id, r.step) for r in store.checkpoints(sweep=SWEEP).itertuples()}
    assert len(checkpoints) == 2 * len(CHECKPOINT_STEPS)
    rows = store.sharpness(sweep=SWEEP)
    got = sorted((r.run_id, r.step, r.metric) for r in rows.itertuples())
    expected = sorted((rid, step, m) for rid, step in checkpoints for m in [*ALL_METRICS, "trace_stderr"])
    assert got == expected
    assert rows.value.notna().all()
    assert f"computed {len(checkpoints) * 4}, skipped 0" in first.stdout

    before = _rows(store_path)
    again = _invoke("--store", str(store_path), "--metric", "logit,hessian,trace,keskar", *CHEAP)
    assert again.exit_code == 0, again.output
    assert f"computed 0, skipped {len(checkpoints) * 4}" in again.stdout
    assert _rows(store_path) == before  # nothing rewritten (created timestamps unchanged)

    # other parameters are other values: a second eps adds one logit row per checkpoint, keeps the first
    more = _invoke("--store", str(store_path), "--eps", "1e-3", "--eps", "1e-2", *CHEAP)
    assert f"computed {len(checkpoints)}, skipped {len(checkpoints)}" in more.stdout
    logit = ResultsStore(store_path).sharpness(sweep=SWEEP, metric="logit")
    assert sorted(p["eps"] for p in logit.params) == [1e-3] * len(checkpoints) + [1e-2] * len(checkpoints)


def test_logit_values_match_a_brute_force_oracle_under_the_run_precision_and_in_fp32(store_path):
    assert _invoke("--store", str(store_path), "--device", "cpu").exit_code == 0
    assert _invoke("--store", str(store_path), "--fp32", "--batch-size", "6", "--device", "cpu").exit_code == 0
    store = ResultsStore(store_path)
    values = store.sharpness(sweep=SWEEP, metric="logit")
    differs = False
    for ck in store.checkpoints(sweep=SWEEP).itertuples():
        model, cfg, _, _ = load_checkpoint(ck.path)
        quantized = model is not fp32_twin(model)
        mine = values[(values.run_id == ck.run_id) & (values.step == ck.step)]
        rows = {p["batch_size"]: (p, v) for p, v in zip(mine.params, mine.value)}
        assert sorted(rows) == sorted([cfg.train.batch_size, 6])
        plain = LM(model.config)
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")})
        # default: the run's precision ("fp32" for a run without casts) on the run's batch size
        params, value = rows[cfg.train.batch_size]
        assert params["precision"] == ("run" if quantized else "fp32")
        x, y = _eval_batch(cfg)
        assert value == pytest.approx(_brute_logit_sharpness(model, x, y, 1e-3), rel=1e-6)
        if quantized:
            differs |= value != pytest.approx(_brute_logit_sharpness(plain, x, y, 1e-3), rel=1e-6)
        # --fp32 --batch-size 6: the same weights without casts, on 6 sequences
        params, value = rows[6]
        assert params["precision"] == "fp32"
        x6, y6 = _eval_batch(cfg, 6)
        assert value == pytest.approx(_brute_logit_sharpness(plain, x6, y6, 1e-3), rel=1e-6)
    assert differs  # e8m3 masking changes the logits: the run's precision was really used


def test_hessian_metrics_are_measured_in_fp32_and_say_so(store_path):
    assert _invoke("--store", str(store_path), "-m", "trace", "--samples", "4", "--device", "cpu").exit_code == 0
    store = ResultsStore(store_path)
    rows = store.sharpness(sweep=SWEEP, metric="trace")
    assert all(p["precision"] == "fp32" for p in rows.params)
    mask = store.runs(sweep=SWEEP)
    mask_id = mask.run_id[mask.format_x == "e8m3"].item()
    ck = store.checkpoints(mask_id).iloc[-1]
    model, cfg, _, _ = load_checkpoint(ck.path)
    plain = LM(model.config)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")})
    x, y = _eval_batch(cfg)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        expected = hessian_trace(lambda: plain.eval()(x, y)[1], list(plain.parameters()), samples=4).estimate
    got = rows[(rows.run_id == mask_id) & (rows.step == int(ck.step))].value.item()
    assert got == pytest.approx(expected, rel=1e-9)


def test_quantized_linear_gives_no_true_second_derivative():
    """Why hessian/trace use fp32: through QuantLinear a double backward runs but drops terms.
    If this starts failing, QuantLinear became twice differentiable and train/sharpness.py can use it."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    exact = hessian_trace(lambda: F.cross_entropy(net(x), y), list(net.parameters()), samples=50).estimate
    quant = convert_model(net, PrecisionConfig.from_cfg({"x": "e8m22", "w": "e8m22", "grad": "e8m22"}))  # one bit short of fp32
    dropped = hessian_trace(lambda: F.cross_entropy(quant(x), y), list(quant.parameters()), samples=50).estimate
    assert abs(dropped - exact) > 0.3 * abs(exact)


def test_default_sweep_is_the_latest(store_path):
    store = ResultsStore(store_path)
    store.add_sweep("newer")  # no runs, no checkpoints
    result = _invoke("--store", str(store_path), "--device", "cpu")
    assert result.exit_code == 0
    assert "sharpness of sweep newer: computed 0, skipped 0" in result.stdout
    assert "no checkpoints" in result.stdout
    assert _invoke("--store", str(store_path), "--sweep", SWEEP, "--device", "cpu").exit_code == 0
    assert len(ResultsStore(store_path).sharpness(sweep=SWEEP)) == 4


def test_a_missing_checkpoint_file_is_reported_and_the_rest_measured(store_path):
    store = ResultsStore(store_path)
    gone = store.checkpoints(sweep=SWEEP).path.iloc[0]
    with sqlite3.connect(store_path) as conn:
        conn.execute("UPDATE checkpoints SET path=? WHERE path=?", (gone + ".missing", gone))
    result = _invoke("--store", str(store_path), "--device", "cpu")
    assert result.exit_code == 1
    assert "computed 3, skipped 0" in result.stdout and "1 checkpoints unreadable" in result.stdout
    assert len(ResultsStore(store_path).sharpness(sweep=SWEEP)) == 3


@pytest.mark.parametrize("args, message", [
    (["--metric", "sharp"], "unknown sharpness metric 'sharp'; accepted: logit, hessian, trace, keskar"),
    (["--metric", "logit,bogus"], "unknown sharpness metric 'bogus'"),
    (["--sweep", "nope"], "unknown sweep 'nope'"),
    (["--eps", "-1"], "--eps must be finite numbers >= 0"),
    (["--batch-size", "0"], "--batch-size must be a positive integer"),
    (["--samples", "1"], "--samples must be an integer >= 2"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(store_path, args, message):
    before = store_path.read_bytes()
    result = _invoke("--store", str(store_path), *args)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
    assert store_path.read_bytes() == before


def test_missing_empty_and_unreadable_stores_are_one_line_exit_2(tmp_path):
    missing = tmp_path / "none" / "store.db"
    result = _invoke("--store", str(missing))
    assert result.exit_code == 2 and "does not exist" in result.stderr and result.stderr.count("\n") == 1
    assert not missing.parent.exists()  # never creates a store
    ResultsStore(tmp_path / "empty.db").close()
    result = _invoke("--store", str(tmp_path / "empty.db"))
    assert result.exit_code == 2 and "holds no sweeps" in result.stderr and result.stderr.count("\n") == 1
    (tmp_path / "junk.db").write_text("not a database\n")
    result = _invoke("--store", str(tmp_path / "junk.db"))
    assert result.exit_code == 2 and "is not an SQLite database" in result.stderr and result.stderr.count("\n") == 1


def test_console_script_bad_metric_is_one_line(store_path):
    proc = subprocess.run([CLI, "sharpness", "--store", str(store_path), "--metric", "flat"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown sharpness metric 'flat'; accepted: logit, hessian, trace, keskar"]


# --------------------------------------------------------------------------- during training


@pytest.mark.parametrize("precision", [
    # stochastic rounding: any extra forward pass that advanced the rounding seeds would change the curve
    ["precision=mask", "precision.format=e8m4", "precision.rounding=stochastic"],
    # delayed scaling: one that pushed amaxes into the histories would change the later scales
    ["precision=fp8_delayed", "precision.delayed.history_len=2"],
])
def test_every_n_steps_records_values_and_leaves_the_curve_bit_identical(train_cfg, tmp_path, monkeypatch, precision):
    monkeypatch.chdir(tmp_path)
    common = [*precision, "model.dropout=0.1"]
    plain, measured = MemoryRecorder(), MemoryRecorder()
    run(train_cfg(*common), recorder=plain)
    cfg = train_cfg(*common, "sharpness.every=3", "sharpness.metrics=[logit,keskar]", "sharpness.eps=0.01",
                    "train.checkpoint_steps=[6]")
    run(cfg, recorder=measured)
    assert [measured.losses(s) for s in ("train", "val")] == [plain.losses(s) for s in ("train", "val")]  # bit for bit
    assert [(s, m) for s, m, _, _ in measured.sharpness_values] == [(s, m) for s in (3, 6, 9) for m in ("logit", "keskar")]
    assert all(math.isfinite(v) and v > 0 for _, _, v, _ in measured.sharpness_values)
    # the value at step 6 is the checkpoint's, on the first fixed validation batch
    model, cfg6, _, _ = load_checkpoint(tmp_path / "checkpoints" / "step_0000006.pt")
    (value, params), = [(v, p) for s, m, v, p in measured.sharpness_values if (s, m) == (6, "logit")]
    assert params == {"batch_size": cfg.train.batch_size, "eps": 0.01, "precision": "run"}
    x, y = _eval_batch(cfg6)
    assert value == pytest.approx(_brute_logit_sharpness(model, x, y, 0.01), rel=1e-6)


def test_training_values_reach_the_store_and_the_command_skips_them(train_cfg, tmp_path):
    store = ResultsStore(tmp_path / "store.db")
    overrides = ["train.checkpoint_steps=[5]", f"train.checkpoint_dir={tmp_path / 'ck'}"]
    cfg = validate(train_cfg("sharpness.every=5", *overrides))
    assert run_id(cfg) == run_id(validate(train_cfg(*overrides)))  # measuring on the side: the same run
    rid = run_id(cfg)
    assert store.claim_run(rid, cfg, "s")
    with store.recorder(rid) as rec:
        run(cfg, recorder=rec)
    rows = store.sharpness(rid)
    assert list(zip(rows.step, rows.metric)) == [(5, "logit"), (10, "logit")]
    result = _invoke("--store", str(tmp_path / "store.db"), "--device", "cpu")
    assert result.exit_code == 0 and "computed 0, skipped 1" in result.stdout  # same key: step 5 was measured


def test_run_directory_gets_sharpness_csv(train_cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run(train_cfg("sharpness.every=4"), recorder=RunDirRecorder(tmp_path))
    with open(tmp_path / "sharpness.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["step"]), r["metric"]) for r in rows] == [(4, "logit"), (8, "logit")]
    assert json.loads(rows[0]["params"]) == {"batch_size": 4, "eps": 0.001, "precision": "fp32"}
    assert all(float(r["value"]) > 0 for r in rows)


@pytest.mark.parametrize("override, message", [
    ("sharpness.every=-1", "sharpness.every must be an integer >= 0"),
    ("sharpness.metrics=[logit,flat]", "sharpness.metrics must be a list of logit, hessian, trace, keskar"),
    ("sharpness.eps=-0.1", "sharpness.eps must be a finite number >= 0"),
])
def test_bad_sharpness_config_is_a_config_error(train_cfg, override, message):
    with pytest.raises(ConfigError, match=message):
        validate(train_cfg(override))


def test_batch_size_a_runs_hadamard_cannot_divide_is_refused():
    """--batch-size changes the tokens of the backward passes: a run whose weight-gradient Hadamard
    transform needs a multiple of 16 tokens must be refused up front, not crash midway."""
    import pandas as pd

    from precisionlab.sweep.sharpness import check_batch_size

    class Store:
        def runs(self, sweep):
            cfg = {"train": {"seq_len": 7, "batch_size": 16}, "precision": {"format": "nvfp4", "hadamard": {"size": 16, "gemms": ["wgrad"]}}}
            return pd.DataFrame({"run_id": ["abc"], "config": [cfg]})

    check_batch_size(Store(), "s", None)
    check_batch_size(Store(), "s", 32)  # 224 tokens
    with pytest.raises(ValueError, match=r"--batch-size 3 gives 21 tokens .* run abc.*multiple of 16"):
        check_batch_size(Store(), "s", 3)


@pytest.mark.slow
def test_sharpness_never_measures_another_runs_or_a_damaged_checkpoint(tmp_path, monkeypatch):
    """Checkpoints holding another run's state, or a flipped bit, are reported (exit 1) and measured under no run."""
    from precisionlab.run.job import recorded_run
    from precisionlab.store import run_id
    from precisionlab.train.rundir import RunDirRecorder

    store = ResultsStore(tmp_path / "r.db")
    store.add_sweep("s", command="test")
    files, ids = [], []
    for seed in (0, 1, 2):
        cfg = validate(compose_train(f"seed={seed}", "train.checkpoint_steps=[4]",
                                     f"train.checkpoint_dir={tmp_path / f'checkpoints{seed}'}"))
        assert recorded_run(cfg, store, RunDirRecorder(tmp_path / f"run{seed}"), sweep="s").status == "completed"
        ids.append(run_id(cfg))
        files.append(Path(store.checkpoints(ids[-1]).path.iloc[0]))
    shutil.copyfile(files[0], files[1])  # run 1's file holds run 0
    flip_a_weight_bit(files[2])
    store.close()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["sharpness", "--store", str(tmp_path / "r.db"), "--metric", "logit"])
    assert result.exit_code == 1, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: checkpoint not measured")]
    assert len(warnings) == 2 and str(files[1]) in warnings[0] + warnings[1] and str(files[2]) in warnings[0] + warnings[1]
    assert any("holds run" in w for w in warnings) and any("is damaged" in w for w in warnings)
    measured = ResultsStore(tmp_path / "r.db").sharpness()
    assert set(measured.run_id) == {ids[0]}


def test_a_tracked_runs_factory_model_matches_the_brute_force_oracle_and_an_unimportable_one_is_one_line(
        tmp_path, monkeypatch):
    import sys

    import precisionlab
    from helpers import one_line_exit_2
    from precisionlab.train.data import get_batch

    (tmp_path / "user_models.py").write_text(
        "from precisionlab.train.model import LM, ModelConfig\n"
        "def lm(config):\n"
        "    return LM(ModelConfig(vocab_size=256, block_size=16, n_layer=1, n_head=2, n_embd=32))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from user_models import lm

    data = {"source": "stdlib", "budget_bytes": 100_000}
    cfg = {"model": {"vocab_size": 256}, "precision": "nvfp4", "optim": {"lr": 1e-2}, "seed": 1, "data": data,
           "train": {"steps": 2, "batch_size": 4, "seq_len": 16, "eval_seed": 7}}
    train_tokens, val_tokens, _ = load_dataset(data)
    db = tmp_path / "s.db"
    with precisionlab.track(cfg, store=db, sweep="mine", checkpoint_dir=tmp_path / "ck", model_factory=lm) as tracked:
        torch.manual_seed(1)
        model = precisionlab.convert_model(lm(cfg), "nvfp4", seed=1)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
        for step in (1, 2):
            _, loss = model(*get_batch(train_tokens, 4, 16, torch.Generator().manual_seed(step)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            tracked.log(step, loss=loss.item())
        tracked.checkpoint(2, {"model": model.state_dict()})
    assert _invoke("--store", str(db), "--sweep", "mine", "--device", "cpu").exit_code == 0
    x, y = get_batch(val_tokens, 4, 16, torch.Generator().manual_seed(7))  # the config's own eval_seed
    (value,) = ResultsStore(db).sharpness(sweep="mine", metric="logit").value
    assert value == pytest.approx(_brute_logit_sharpness(model, x, y, 1e-3), rel=1e-6)
    before = _rows(db)
    monkeypatch.delitem(sys.modules, "user_models")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    result = _invoke("--store", str(db), "--sweep", "mine", "--fp32", "--device", "cpu")
    one_line_exit_2(result, "model_factory 'user_models:lm' cannot be imported")
    assert _rows(db) == before
