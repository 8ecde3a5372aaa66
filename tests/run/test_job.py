"""One run as a sweep job (precisionlab.run.job): a run that raises, in the job or inside training, is
recorded `failed` and the sweep goes on; a failure before the claim is recorded too; a branch's parent
checkpoint is checked before anything runs; a rerun resumes only from its own checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

import precisionlab.run.job as job_mod
import precisionlab.train.loop as train_mod
from helpers import MICRO, SWEEP_MICRO
from helpers.checkpoints import flip_a_weight_bit, stored_run
from helpers.store import store_with_pending_runs
from precisionlab.cli import app
from precisionlab.store import ResultsStore, StoreError


def test_job_failing_before_its_claim_is_recorded_failed(tmp_path, monkeypatch):
    """A store that refuses the claim (e.g. made read-only mid-sweep): before, the run stayed pending."""
    from hydra import compose, initialize_config_module
    from hydra.core.hydra_config import HydraConfig

    from precisionlab.run import job

    store = store_with_pending_runs(tmp_path / "s.db")
    with initialize_config_module(config_module="precisionlab.configs", version_base="1.3"):
        cfg = compose(config_name="sweep", overrides=[*MICRO, "precision=mask", "precision.format=e8m3", "optim.lr=1e-3",
                                                      "train.checkpoint_every=0",  # as the train config (sweep=default sets 50)
                                                      f"store.path={tmp_path / 's.db'}", "sweep.name=p"])

    class Hydra:
        runtime = type("R", (), {"cwd": str(tmp_path), "choices": {}})
        launcher = {"_target_": "basic"}

    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: Hydra))
    monkeypatch.setattr(ResultsStore, "claim_run", lambda *a, **k: (_ for _ in ()).throw(StoreError("disk full")))
    assert job.run_job(cfg) == "failed"
    runs = store.runs(sweep="p")
    row = runs[runs.lr == 1e-3].iloc[0]
    assert row.status == "failed" and "disk full" in row.error
    assert set(runs.status) == {"failed", "pending"}  # the other run was never started


@pytest.fixture(scope="module")
def parents(tmp_path_factory):
    """A store of parent runs (checkpoint at step 4): a tied-weights parent, an untied one, one whose
    checkpoint holds another run's state, one whose checkpoint is damaged."""
    from precisionlab.store import run_id

    root = tmp_path_factory.mktemp("parents")
    store = ResultsStore(root / "parents.db")
    ids = {name: run_id(stored_run(store, root / name, *overrides)[0]) for name, overrides in (
        ("tied", []), ("untied", ["model.tie_weights=false"]), ("overwritten", ["seed=1"]), ("damaged", ["seed=2"]))}
    path = {name: store.checkpoints(rid).path.iloc[0] for name, rid in ids.items()}
    shutil.copyfile(path["tied"], path["overwritten"])  # another run's file in its place
    flip_a_weight_bit(Path(path["damaged"]))
    store.close()
    return SimpleNamespace(db=root / "parents.db", ids=ids, path=path)


def _branch_cases(parents) -> list[tuple[list[str], str]]:
    """(command line, a fragment of the one error line): branches whose parent check must refuse them."""
    ids, path = parents.ids, parents.path
    grid = ["sweep=fp4", "precision=bf16", "optim.lr=3e-3", "seed=0"]  # its grid replaced: one run
    cases = []
    for command, extra in (("train", []), ("sweep", grid)):
        common = [command, *extra, *MICRO, f"store.path={parents.db}"]
        cases += [
            ([*common, f"init.parent={ids['overwritten']}@4"],
             f"checkpoint {path['overwritten']} holds run {ids['tied']} at step 4, not run {ids['overwritten']} at step 4"),
            ([*common, f"init.parent={ids['damaged']}@4"],
             f"checkpoint {path['damaged']} is damaged: its content does not match its checksum"),
            ([*common, f"init.parent={ids['tied']}@4", "model.tie_weights=false"], "(model.tie_weights changed?)"),
            ([*common, f"init.parent={ids['untied']}@4", "model.tie_weights=true"], "(model.tie_weights changed?)"),
        ]
    return cases


@pytest.mark.slow
def test_branches_from_checkpoints_that_do_not_hold_their_parent_are_one_line_exit_2(parents, tmp_path, monkeypatch):
    """Another run's file, a flipped bit, a model that changed tie_weights: each refused before anything
    is written (the store's rows unchanged, no run folder), never trained into a `diverged` or `failed` row."""
    def rows():
        store = ResultsStore(parents.db)
        try:
            return sorted(store.runs().run_id), len(store.metrics()), len(store.checkpoints())
        finally:
            store.close()

    before, failures = rows(), []
    for i, (args, fragment) in enumerate(_branch_cases(parents)):
        cwd = tmp_path / f"case{i}"
        cwd.mkdir()
        monkeypatch.chdir(cwd)
        result = CliRunner().invoke(app, args)
        lines = result.stderr.strip().splitlines()
        if (result.exit_code != 2 or len(lines) != 1 or not lines[0].startswith("error: ") or fragment not in lines[0]
                or list(cwd.iterdir()) or rows() != before):
            failures.append(f"{args[0]} {args[-2:]}: exit {result.exit_code}, stderr {result.stderr!r}, "
                            f"wrote {list(cwd.iterdir())}")
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_a_rerun_never_resumes_from_another_runs_checkpoint(tmp_path):
    """Run A's step-4 checkpoint replaced by run B's (both wrote one train.checkpoint_dir): rerunning A
    trains it from the start, to A's own curve, instead of continuing B's weights under A's name."""
    from precisionlab.store import run_id

    from precisionlab.run.job import recorded_run
    from precisionlab.train.rundir import RunDirRecorder

    class StopsAtStep6(RunDirRecorder):  # a run that dies after its step-4 checkpoint (recorded `failed`)
        def log(self, step, split, metrics):
            if step == 6:
                raise RuntimeError("killed")
            super().log(step, split, metrics)

    store = ResultsStore(tmp_path / "r.db")
    (cfg_a, whole), (cfg_b, _) = stored_run(store, tmp_path / "a"), stored_run(store, tmp_path / "b", "seed=1")
    a_id = run_id(cfg_a)
    assert recorded_run(cfg_a, store, StopsAtStep6(tmp_path / "killed"), force=True).status == "failed"
    a_file, b_file = (store.checkpoints(run_id(cfg)).path.iloc[0] for cfg in (cfg_a, cfg_b))
    shutil.copyfile(b_file, a_file)  # B's state in A's file
    rerun = recorded_run(cfg_a, store, RunDirRecorder(tmp_path / "rerun"))  # a failed run resumes from its checkpoint if it can
    assert rerun.status == "completed"
    assert (rerun.final_val_loss, rerun.final_train_loss) == (whole.final_val_loss, whole.final_train_loss)
    assert store.metrics(a_id, split="train").step.tolist() == list(range(1, 11))


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

    def build(cfg):
        model = real_build(cfg)
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
