"""Sweep planning, thread shares and fault handling, in-process (the CLI end to end is in test_sweep_cli.py)."""

from __future__ import annotations

import itertools
import os

import pytest
from typer.testing import CliRunner

import precisionlab.sweep.job as job_mod
import precisionlab.train.loop as train_mod
from helpers import SWEEP_MICRO
from precisionlab.cli import app
from precisionlab.store import ResultsStore
from precisionlab.sweep.launchers import threads_per_job
from precisionlab.sweep.plan import plan
from precisionlab.train.recorder import Tee


def _files(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


def test_plan_is_the_cartesian_product_and_writes_nothing(tmp_path):
    formats, lrs = ["e8m7", "e8m3"], [1e-3, 1e-2]
    grid = plan(["precision.format=e8m7,e8m3", "optim.lr=1e-3,1e-2", "seed=4", *SWEEP_MICRO], cwd=tmp_path)
    got = sorted((c.precision.x, c.precision.w, c.precision.grad, c.optim.lr, c.seed) for c in grid.configs)
    assert got == sorted((f, f, f, lr, 4) for f, lr in itertools.product(formats, lrs))
    assert all(c.precision.rounding == "toward_zero" for c in grid.configs)  # the default grid's masking
    assert len(set(grid.run_ids)) == 4 and grid.runs == list(dict.fromkeys(grid.run_ids))
    assert grid.name.startswith("default-") and len(grid.name) == len("default-") + 6
    assert grid.store == "sqlite:///" + str(tmp_path / "results" / "precisionlab.db")
    assert _files(tmp_path) == []


def test_default_grid_comes_from_the_sweep_config_and_the_command_line_replaces_a_key(tmp_path):
    grid = plan([], cwd=tmp_path)
    assert grid.name == "default" and not grid.force
    values = {(c.precision.x, c.optim.lr, c.seed) for c in grid.configs}
    formats = ["e8m7", "e8m3", "e8m0", "e5m7", "e4m7"]  # configs/sweep/default.yaml
    assert values == set(itertools.product(formats, [3e-3], range(6)))
    assert {c.model.n_layer for c in grid.configs} == {2}  # tiny
    seeds = plan(["seed=7"], cwd=tmp_path)
    assert len(seeds.configs) == 5 and {c.seed for c in seeds.configs} == {7}
    assert seeds.name.startswith("default-")


@pytest.mark.slow
def test_paper_grid(tmp_path):
    grid = plan(["sweep=paper"], cwd=tmp_path)
    assert grid.name == "paper"
    formats = ["e8m7", "e8m6", "e8m5", "e8m4", "e8m3", "e8m2", "e8m1", "e8m0", "e7m7", "e6m7", "e5m7", "e4m7"]
    assert sorted({c.precision.x for c in grid.configs}) == sorted(formats)
    assert len(grid.configs) == len(formats) * len({c.optim.lr for c in grid.configs}) * len({c.seed for c in grid.configs})
    assert all(c.precision.rounding == "toward_zero" and c.precision.scaling == "none" and c.precision.saturate
               for c in grid.configs)


def test_master_weights_grid(tmp_path):
    """Three optim presets over bf16 GEMMs: fp32 master weights (at the neutral keys), bf16 weights
    rounded to nearest even, and stochastically; paired seeds."""
    grid = plan(["sweep=master_weights"], cwd=tmp_path)
    assert grid.name == "master_weights" and len(set(grid.run_ids)) == len(grid.configs) == 18
    variants = {(c.optim.master_format, c.optim.master_rounding) for c in grid.configs}
    assert variants == {("fp32", "nearest_even"), ("bf16", "nearest_even"), ("bf16", "stochastic")}
    assert {c.seed for c in grid.configs} == set(range(6))
    assert all(c.precision.name == "bf16" and c.optim.lr == 3e-4 and c.train.steps == 400 for c in grid.configs)


@pytest.mark.slow
def test_name_ignores_order_and_non_semantic_overrides(tmp_path):
    a = plan(["seed=0,1", "optim.lr=1e-3,1e-2"], cwd=tmp_path)
    b = plan(["optim.lr=1e-3,1e-2", "seed=0,1"], cwd=tmp_path)
    assert a.name == b.name and set(a.run_ids) == set(b.run_ids)
    same = plan(["train.threads=1", "store.path=elsewhere.db", "hydra/launcher=joblib", "sweep.force=true"],
                       cwd=tmp_path)
    assert same.name == "default" and same.force and set(same.run_ids) == set(plan([], cwd=tmp_path).run_ids)
    assert plan(["sweep.name=mine", "seed=3"], cwd=tmp_path).name == "mine"


@pytest.mark.parametrize("launcher, cores, threads", [
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}, 2, 1),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 2}, 8, 4),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": -1}, 8, 1),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": -2}, 8, 1),
    ({"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": 16}, 8, 1),
    ({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, 8, 8),
    ({"_target_": "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher", "ray": {"remote": {"num_cpus": 3}}}, 8, 3),
    ({"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", "cpus_per_task": 4}, 8, 4),
])
def test_threads_per_job_share_the_cores(monkeypatch, launcher, cores, threads):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert threads_per_job(launcher) == threads


def _invoke(*args):
    return CliRunner().invoke(app, ["sweep", *args])


@pytest.mark.slow
def test_a_run_that_raises_is_failed_and_the_sweep_goes_on(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    real_run = job_mod.run

    def run(cfg, recorder=None, resume_from=None, **kwargs):
        if cfg.optim.lr == 1e-2:
            raise RuntimeError("injected fault")
        return real_run(cfg, recorder=recorder, resume_from=resume_from, **kwargs)

    monkeypatch.setattr(job_mod, "run", run)
    result = _invoke("precision.format=e8m7", "optim.lr=1e-2,1e-3", "seed=0", "train.threads=1", *SWEEP_MICRO)
    assert result.exit_code == 1, result.output  # a failed run makes the sweep's exit code 1
    runs = ResultsStore(tmp_path / "results" / "precisionlab.db").runs()
    assert sorted(zip(runs.lr, runs.status)) == [(1e-3, "completed"), (1e-2, "failed")]
    failed = runs[runs.status == "failed"].iloc[0]
    assert failed.error == "RuntimeError: injected fault" and failed.finished is not None
    assert "1 completed, 0 diverged, 1 failed" in result.stdout


@pytest.mark.slow
def test_a_run_that_fails_inside_training_is_failed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    real_build = train_mod.build_model

    def build(cfg, precision):
        model = real_build(cfg, precision)
        if cfg.precision.x == "e8m3":
            def explode(module, args, output):
                raise FloatingPointError("boom in the forward pass")
            model.lm_head.register_forward_hook(explode)
        return model

    monkeypatch.setattr(train_mod, "build_model", build)
    result = _invoke("precision.format=e8m3,e8m7", "optim.lr=1e-3", "seed=0", "train.threads=1",
                     "store.path=mine.db", *SWEEP_MICRO)
    assert result.exit_code == 1
    store = ResultsStore(tmp_path / "mine.db")
    runs = store.runs()
    assert dict(zip(runs.format_x, runs.status)) == {"e8m3": "failed", "e8m7": "completed"}
    assert "boom in the forward pass" in runs.set_index("format_x").error["e8m3"]
    (name,) = store.sweeps().name  # the summary names the report command, with the non-default store
    assert result.stdout.strip().endswith(f"precisionlab report --sweep {name} --store {tmp_path / 'mine.db'}")


def test_tee_hands_every_call_on_and_skips_missing_optional_hooks():
    class Plain:
        def __init__(self):
            self.calls = []

        def start(self, meta):
            self.calls.append(("start", meta))

        def log(self, step, split, metrics):
            self.calls.append(("log", step, split, metrics))

        def checkpoint(self, step, path):
            self.calls.append(("checkpoint", step, path))

        def finish(self, outcome):
            self.calls.append(("finish", outcome))

    class WithSharpness(Plain):
        def sharpness(self, step, metric, value, params):
            self.calls.append(("sharpness", step, metric, value, params))

        def diagnostics(self, step, rows):
            self.calls.append(("diagnostics", step, rows))

    plain, sharp = Plain(), WithSharpness()
    tee = Tee(plain, None, sharp, extra_meta={"run_dir": "/x"})
    tee.start({"a": 1})
    tee.log(1, "train", {"loss": 2.0})
    tee.checkpoint(1, "c.pt")
    tee.sharpness(1, "logit", 0.5, {"eps": 1e-3})
    tee.diagnostics(1, [("model", "grad_cosine", 1.0)])  # optional too
    tee.finish({"status": "completed"})
    common = [("start", {"a": 1, "run_dir": "/x"}), ("log", 1, "train", {"loss": 2.0}), ("checkpoint", 1, "c.pt")]
    assert plain.calls == [*common, ("finish", {"status": "completed"})]
    assert sharp.calls == [*common, ("sharpness", 1, "logit", 0.5, {"eps": 1e-3}),
                           ("diagnostics", 1, [("model", "grad_cosine", 1.0)]), ("finish", {"status": "completed"})]


class _ScriptedStore:
    """`running()` answers from a script: one (alive, interrupted) pair per call, the last one repeating."""

    def __init__(self, *answers):
        self.answers, self.calls = list(answers), 0

    def running(self, run_ids):
        self.calls += 1
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


class _Grid:
    name, runs = "g", ["a", "b"]


@pytest.mark.parametrize("answers, launches", [
    ([(set(), set())], 1),                                        # all done by this sweep
    ([({"a"}, set()), ({"a"}, set()), (set(), set())], 1),        # "a" computed by another process: wait
    ([(set(), {"a"}), (set(), set())], 2),                        # "a" interrupted: resumed once
    ([({"b"}, set()), (set(), {"b"}), (set(), set())], 2),        # the other process died: resumed here
    ([(set(), {"a"})], 2),                                        # still interrupted: no endless relaunching
])
def test_complete_waits_for_other_processes_and_resumes_interrupted_runs(answers, launches):
    from precisionlab.sweep.progress import complete

    launched, lines = [], []
    store = _ScriptedStore(*answers)
    complete(store, _Grid(), lambda: launched.append(1), poll=0, stream=type("S", (), {
        "write": lambda self, text: lines.append(text), "flush": lambda self: None})())
    assert len(launched) == launches
    assert any("waiting for 1 runs" in line for line in lines) == any(alive for alive, _ in answers)
