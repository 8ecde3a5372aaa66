"""`precisionlab.track`: a user's own loop recorded into the results store, with the outcome rules of
`precisionlab train`, readable by `precisionlab report` and `store copy`."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import precisionlab
from helpers import CLI, one_line_exit_2
from helpers.extras import require
from precisionlab.cli import app
from precisionlab.run.track import track
from precisionlab.store import ResultsStore, run_id
from precisionlab.store.copy import copy_sweeps
from precisionlab.train.checkpoint import read_checkpoint
from precisionlab.train.data import get_batch, load_dataset
from precisionlab.train.sharpness import measure

EXAMPLE = Path(__file__).resolve().parents[2] / "scripts" / "example_own_loop.py"


def config(precision="fp32", lr=1e-3, seed=0, **extra):
    return {"model": {"name": "mine", "vocab_size": 256, "width": 32}, "precision": precision,
            "optim": {"lr": lr}, "seed": seed, "train": {"steps": 30}, **extra}


def test_what_the_loop_logs_is_what_the_store_holds(tmp_path):
    db = tmp_path / "s.db"
    with precisionlab.track(config("mxfp8"), store=db, sweep="mine") as run:
        assert not run.done
        for step in range(1, 31):
            assert run.log(step, loss=5.0 - step / 10, val_loss=5.2 - step / 20 if step % 10 == 0 else None,
                           grad_norm=0.5, tokens=64 * step) is False
    store = ResultsStore(db)
    train = store.metrics(run.id, split="train")
    assert list(train.step) == list(range(1, 31))
    assert list(train.loss) == [5.0 - s / 10 for s in range(1, 31)]
    assert list(train.grad_norm) == [0.5] * 30 and list(train.tokens) == [64 * s for s in range(1, 31)]
    val = store.metrics(run.id, split="val")
    assert list(val.step) == [10, 20, 30] and list(val.loss) == [5.2 - s / 20 for s in (10, 20, 30)]
    row = store.runs(sweep="mine").iloc[0]
    assert row.run_id == run.id and row.status == "completed" == run.status
    assert row.steps_done == 30 and row.final_val_loss == 5.2 - 30 / 20 and row.lr == 1e-3 and row.seed == 0
    assert row.config["precision"]["name"] == "mxfp8" and row.format_x == "e4m3fn/b32/e8m0/rceil"
    assert row.meta["tracker"] == "precisionlab.track" and row.torch_version == torch.__version__


def test_a_nan_loss_is_diverged_at_its_step(tmp_path):
    with track(config(), store=tmp_path / "s.db") as run:
        for step in range(1, 10):
            loss = float("nan") if step == 7 else 4.0
            if run.log(step, loss=loss):
                break
    assert step == 7
    row = ResultsStore(tmp_path / "s.db").runs().iloc[0]
    assert row.status == "diverged" and row.diverged_step == 7


def test_a_run_ending_above_ln_v_is_diverged_where_its_final_stretch_rose_above(tmp_path):
    level = math.log(256)
    losses = [4.0] * 30 + [level + 1] * 30  # steps 10, 20, ...: the loop's own numbering
    with track(config(), store=tmp_path / "s.db") as run:
        for i, loss in enumerate(losses):
            run.log(10 * (i + 1), loss=loss)
    row = ResultsStore(tmp_path / "s.db").runs().iloc[0]
    # the median of the last 20 losses first exceeds ln V once 11 of them are above: the 41st loss
    assert row.status == "diverged" and row.diverged_step == 10 * 41


def test_a_raising_loop_is_failed_keeps_its_rows_and_reraises(tmp_path):
    with pytest.raises(KeyError, match="boom"):
        with track(config(), store=tmp_path / "s.db", checkpoint_dir=tmp_path / "ck") as run:
            for step in range(1, 6):
                run.log(step, loss=4.0 - step / 10)
            path = run.checkpoint(5, {"model": {"w": torch.arange(4.0)}})
            raise KeyError("boom")
    store = ResultsStore(tmp_path / "s.db")
    row = store.runs().iloc[0]
    assert row.status == "failed" and "KeyError" in row.error and "boom" in row.error
    assert list(store.metrics(run.id, split="train").step) == [1, 2, 3, 4, 5]
    stored = store.checkpoints(run.id)
    assert list(stored.step) == [5] and stored.path.iloc[0] == str(path)
    state = read_checkpoint(path, run_id=run.id, step=5)  # checksum, run and step verified
    assert torch.equal(state["state"]["model"]["w"], torch.arange(4.0))
    assert state["config"]["precision"]["name"] == "fp32"


def test_a_finished_config_is_not_trained_again_unless_forced(tmp_path):
    db = tmp_path / "s.db"
    with track(config(), store=db) as run:
        run.log(1, loss=4.0, val_loss=4.1)
    with track(config(), store=db) as again:
        assert again.done and again.status == "completed" and again.id == run.id
        with pytest.raises(RuntimeError, match="already completed .* force=True"):
            again.log(1, loss=3.0)
    with track(config(), store=db, force=True) as forced:
        assert not forced.done
        forced.log(1, loss=3.0, val_loss=3.5)
    assert ResultsStore(db).runs().iloc[0].final_val_loss == 3.5


def test_a_block_that_logs_nothing_is_failed(tmp_path):
    with track(config(), store=tmp_path / "s.db"):
        pass
    row = ResultsStore(tmp_path / "s.db").runs().iloc[0]
    assert row.status == "failed" and "logged no train loss" in row.error


@pytest.mark.parametrize("change, fragment", [
    ({"optim": {}}, "track's config lacks optim.lr; it needs precision, optim.lr, seed, model.vocab_size, train.steps"),
    ({"precision": None}, "lacks precision"),
    ({"optim": {"lr": 0}}, "optim.lr must be a number > 0; got 0"),
    ({"seed": -1}, "seed must be an integer >= 0; got -1"),
    ({"model": {"vocab_size": 1}}, "model.vocab_size must be an integer >= 2; got 1"),
    ({"train": {"steps": 2.5}}, "train.steps must be an integer >= 1; got 2.5"),
    ({"precision": "nvfp5"}, "unknown precision preset 'nvfp5'; the presets are"),
    ({"precision": {"preset": "nvfp4", "formt": "e4m3"}}, "precision.formt is not a config key"),
])
def test_a_bad_config_is_one_line_and_writes_nothing(tmp_path, change, fragment):
    with pytest.raises(ValueError) as err:
        track({**config(), **change}, store=tmp_path / "s.db")
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "s.db").exists()


def test_tracked_runs_copy_and_sharpness_refuses_them_in_one_line(tmp_path):
    db = tmp_path / "s.db"
    ids = []
    for precision in ("fp32", "nvfp4"):
        with track(config(precision), store=db, sweep="mine", checkpoint_dir=tmp_path / "ck") as run:
            run.log(1, loss=4.0, val_loss=4.2)
            run.checkpoint(1, {"step": 1})
        ids.append(run.id)
    src, dst = ResultsStore(db), ResultsStore(tmp_path / "copy.db")
    copy_sweeps(src, dst, ["mine"])
    assert sorted(dst.runs(sweep="mine").run_id) == sorted(ids)
    assert dst.metrics(sweep="mine").loss.tolist() == src.metrics(sweep="mine").loss.tolist()
    assert sorted(dst.checkpoints(sweep="mine").path) == sorted(src.checkpoints(sweep="mine").path)
    result = CliRunner().invoke(app, ["sharpness", "--store", str(db), "--sweep", "mine"])
    one_line_exit_2(result, "holds runs recorded by precisionlab.track")
    assert "model_factory=" in result.stderr and "data" in result.stderr


FACTORY = "helpers.factories:tiny_lm"
DATA = {"source": "stdlib", "budget_bytes": 100_000}


def test_sharpness_measures_a_tracked_run_rebuilt_by_its_factory(tmp_path):
    from helpers.factories import tiny_lm

    cfg = config("mxfp8", lr=3e-3, data=DATA, train={"steps": 3, "batch_size": 4, "seq_len": 16})
    train_tokens, val_tokens, data_meta = load_dataset(DATA)
    db = tmp_path / "s.db"
    with track(cfg, store=db, sweep="mine", checkpoint_dir=tmp_path / "ck", meta={"data": data_meta},
               model_factory=FACTORY) as run:
        torch.manual_seed(0)
        model = precisionlab.convert_model(tiny_lm(cfg), "mxfp8", seed=0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        batches = torch.Generator().manual_seed(0)
        for step in range(1, 4):
            _, loss = model(*get_batch(train_tokens, 4, 16, batches))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            run.log(step, loss=loss.item())
        run.checkpoint(3, {"model": model.state_dict()})
    assert run.id == run_id(run.config)  # the factory is not in the config: the id is the config's
    assert ResultsStore(db).runs().iloc[0].meta["model_factory"] == FACTORY
    for extra in ([], ["--fp32", "--batch-size", "2"]):
        result = CliRunner().invoke(app, ["sharpness", "--store", str(db), "--sweep", "mine", "--metric", "logit",
                                          "--device", "cpu", *extra])
        assert result.exit_code == 0, result.output
    values = ResultsStore(db).sharpness(sweep="mine", metric="logit")
    got = {(p["precision"], p["batch_size"]): v for p, v in zip(values.params, values.value)}
    assert sorted(got) == [("fp32", 2), ("run", 4)]
    # oracle: measure() on the model the loop trained (not the command's rebuilt one), on the first
    # validation batch drawn as training draws it, with the train schema's default eval_seed 1234
    for (precision, size), value in got.items():
        batch = get_batch(val_tokens, size, 16, torch.Generator().manual_seed(1234))
        params = {"batch_size": size, "precision": precision, "eps": 1e-3}
        assert value == pytest.approx(measure(model, batch, "logit", params)["logit"], rel=1e-6)
    batch = get_batch(val_tokens, 4, 16, torch.Generator().manual_seed(1234))
    uncast = measure(model, batch, "logit", {"batch_size": 4, "precision": "fp32", "eps": 1e-3})["logit"]
    assert got[("run", 4)] != pytest.approx(uncast, rel=1e-6)  # the run's casts were really used


def test_a_factory_given_as_its_function_is_recorded_by_name_and_data_is_still_needed(tmp_path):
    from helpers.factories import tiny_lm

    db = tmp_path / "s.db"
    with track(config(), store=db, sweep="mine", checkpoint_dir=tmp_path / "ck", model_factory=tiny_lm) as run:
        run.log(1, loss=4.0)
        run.checkpoint(1, {"model": {}})
    assert ResultsStore(db).runs().iloc[0].meta["model_factory"] == FACTORY
    result = CliRunner().invoke(app, ["sharpness", "--store", str(db), "--sweep", "mine"])
    one_line_exit_2(result, "lacking data, train.batch_size, train.seq_len:")  # the factory is not what it lacks


@pytest.mark.parametrize("factory, fragment", [
    ("no_colon", "is not a 'package.module:function'"),
    ("no_such_module_xyz:f", "cannot be imported (ModuleNotFoundError"),
    ("helpers.factories:missing", "cannot be imported (AttributeError"),
    ("helpers.factories:NOT_A_FUNCTION", "is a int, not a function"),
    (lambda config: None, "<lambda> cannot be imported by another process"),
    ("local", "<locals>"),
    (42, "must be a 'package.module:function' string"),
])
def test_a_bad_model_factory_is_one_line_at_track_time_and_writes_nothing(tmp_path, factory, fragment):
    if factory == "local":
        def factory(config):
            return None
    with pytest.raises(ValueError) as err:
        track(config(), store=tmp_path / "s.db", model_factory=factory)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "s.db").exists()


@pytest.mark.slow
def test_the_example_script_trains_two_runs_that_report_names(tmp_path):
    require("transformers")
    db = tmp_path / "own.db"
    example = subprocess.run([sys.executable, str(EXAMPLE), "--store", str(db), "--steps", "24",
                              "--checkpoints", str(tmp_path / "ck")], capture_output=True, text=True, timeout=300)
    assert example.returncode == 0, example.stderr
    runs = ResultsStore(db).runs(sweep="own-loop")
    assert sorted(runs.config.map(lambda c: c["precision"]["name"])) == ["fp32", "mxfp8"]
    assert set(runs.status) == {"completed"} and set(runs.steps_done) == {24}
    report = subprocess.run([CLI, "report", "--store", str(db), "--sweep", "own-loop", "--out", str(tmp_path / "r")],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "2 runs (2 completed)" in report.stdout
    lines = report.stdout.splitlines()
    assert any(line.startswith("fp32 ") for line in lines) and any(line.startswith("e4m3fn:b32:e8m0:rceil ") for line in lines)
    # its factory (scripts/own_loop_model.py) is importable with scripts/ on the path: sharpness measures both runs
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLE.parent), os.environ.get("PYTHONPATH", "")])}
    sharp = subprocess.run([CLI, "sharpness", "--store", str(db), "--sweep", "own-loop", "--device", "cpu"],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert sharp.returncode == 0, sharp.stderr
    values = ResultsStore(db).sharpness(sweep="own-loop", metric="logit")
    assert sorted(p["precision"] for p in values.params) == ["fp32", "run"]  # the fp32 run has no casts
    assert values.value.map(math.isfinite).all() and (values.value > 0).all()


def test_tensors_and_other_values_are_stored_as_plain_values(tmp_path):
    with track(config(dtype=torch.bfloat16), store=tmp_path / "s.db", checkpoint_dir=tmp_path / "ck") as run:
        run.log(1, loss=torch.tensor(4.5), val_loss=torch.tensor(4.75), lr=torch.tensor(0.5))
        with pytest.raises(ValueError, match="metric note='x' is not a number"):
            run.log(2, loss=4.0, note="x")
        path = run.checkpoint(1, {"model": {"w": torch.ones(2)}})
    store = ResultsStore(tmp_path / "s.db")
    assert store.runs().iloc[0].config["dtype"] == "torch.bfloat16"
    assert store.metrics(run.id, split="train").lr.tolist() == [0.5]
    assert store.metrics(run.id, split="val").loss.tolist() == [4.75]
    assert read_checkpoint(path, run_id=run.id, step=1)["config"]["dtype"] == "torch.bfloat16"


def test_a_run_on_other_data_than_its_sweep_fails_at_the_start_and_holds_no_claim(tmp_path):
    from precisionlab.store import StoreError

    db = tmp_path / "s.db"
    with track(config(), store=db, sweep="mine", meta={"data": {"fingerprint": "aaa"}}) as run:
        run.log(1, loss=4.0)
    with pytest.raises(StoreError, match="aaa|bbb"):
        track(config(seed=1), store=db, sweep="mine", meta={"data": {"fingerprint": "bbb"}})
    rows = ResultsStore(db).runs().set_index("seed")
    assert rows.status[1] == "failed" and rows.status[0] == "completed"  # failed, not left `running` by us
    assert "fingerprint" in rows.error[1] or "bbb" in rows.error[1]


def test_the_example_without_transformers_is_one_line_and_exit_2(tmp_path):
    blocked = ("import runpy, sys; sys.modules['transformers'] = None; "  # None in sys.modules: ImportError
               f"sys.argv = ['example', '--store', {str(tmp_path / 's.db')!r}]; runpy.run_path({str(EXAMPLE)!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == 'error: this example needs transformers; pip install "precisionlab[hf]"'
    assert not (tmp_path / "s.db").exists()
