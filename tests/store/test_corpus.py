"""One corpus per run id: report, store copy, a resumed sweep and a resumed run refuse to put runs
of one data config trained on different data (fingerprints) together."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from helpers import SWEEP_MICRO
from helpers.store import make_config, record
from precisionlab.analysis.compare import compare
from precisionlab.analysis.report import ReportError, build
from precisionlab.cli import app
from precisionlab.store import ResultsStore, StoreError
from precisionlab.store.copy import copy_sweeps
from precisionlab.store.corpus import check_sweep_data
from precisionlab.sweep.plan import plan
from precisionlab.train.data import DataError, load_dataset
from precisionlab.train.checkpoint import save_checkpoint
from precisionlab.train.loop import run

HERE, THERE = "a" * 64, "b" * 64  # two machines' fingerprints of one data config


def _meta(fingerprint: str) -> dict:
    return {"device": "cpu", "data": {"source": "stdlib", "fingerprint": fingerprint}}


def _store(path, sweep="s", fingerprints=(HERE, HERE), lrs=(1e-3, 1e-2), **extra) -> ResultsStore:
    """Runs of `sweep` trained on `fingerprints`: a mixed store as one written before runs were checked
    at their start (or merged by hand) holds it."""
    store = ResultsStore(path)
    for lr, fingerprint in zip(lrs, fingerprints):
        rid = record(store, make_config(lr=lr, **extra), sweep=sweep, meta=_meta(fingerprints[0]))
        store.write(lambda tx: tx.execute("UPDATE runs SET meta=? WHERE run_id=?", (json.dumps(_meta(fingerprint)), rid)))
    return store


def test_report_refuses_a_sweep_whose_runs_trained_on_two_corpora(tmp_path, monkeypatch):
    mixed = _store(tmp_path / "mixed.db", fingerprints=(HERE, THERE))
    with pytest.raises(ReportError, match="mixes corpora: runs .*fingerprints aaaaaaaaaaaa and bbbbbbbbbbbb"):
        build(mixed)
    mixed.close()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["report", "--store", "mixed.db"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "mixes corpora" in result.stderr
    assert not (tmp_path / "reports").exists()
    same = _store(tmp_path / "same.db")
    assert len(build(same).runs) == 2  # one corpus: reported


def test_runs_of_different_data_configs_may_differ_in_fingerprint(tmp_path):
    store = ResultsStore(tmp_path / "s.db")
    for budget, fingerprint in ((1_000_000, HERE), (2_000_000, THERE)):
        record(store, make_config(data={"source": "stdlib", "budget_bytes": budget}), sweep="s", meta=_meta(fingerprint))
    assert len(build(store).runs) == 2


def test_comparing_two_sweeps_trained_on_two_corpora_is_refused(tmp_path):
    store = _store(tmp_path / "s.db", sweep="here")
    for lr in (1e-3, 1e-2):
        record(store, make_config(lr=lr, seed=1), sweep="there", meta=_meta(THERE))
    with pytest.raises(ReportError, match="comparing sweeps 'here' and 'there' mixes corpora"):
        compare(build(store, "here"), build(store, "there"))


@pytest.mark.parametrize("other_id", [False, True])
def test_store_copy_refuses_to_merge_a_sweep_trained_elsewhere(tmp_path, store_url, other_id):
    src = _store(tmp_path / "src.db", fingerprints=(THERE, THERE))
    dst = _store(store_url, fingerprints=(HERE,), lrs=(3e-3,) if other_id else (1e-3,))
    before = dst.runs()
    with pytest.raises(StoreError, match="copying sweep s into .* mixes corpora"):
        copy_sweeps(src, dst)
    after = dst.runs()
    assert list(after.run_id) == list(before.run_id) and list(after.meta) == list(before.meta)  # DST unchanged
    same = _store(tmp_path / "same.db", fingerprints=(THERE,), lrs=(3e-3,))
    assert copy_sweeps(src, same)[0].copied == 2  # one corpus: copied


def test_a_sweep_resumed_on_a_machine_with_another_corpus_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [*SWEEP_MICRO, "data.budget_bytes=200000", "optim.lr=1e-3,1e-2", "seed=0", "sweep.name=s",
            "store.path=s.db"]
    grid = plan(args, cwd=tmp_path)
    store = ResultsStore(tmp_path / "s.db")
    record(store, grid.configs[0], sweep="s", meta=_meta(THERE))  # the first run, trained elsewhere
    with pytest.raises(StoreError, match="this machine's data gives fingerprint .* but run .* trained on bbbbbbbbbbbb"):
        check_sweep_data(store, grid.name, grid.configs, grid.run_ids)
    store.close()
    result = CliRunner().invoke(app, ["sweep", *args])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "trained on bbbbbbbbbbbb" in result.stderr
    assert len(ResultsStore(tmp_path / "s.db").runs()) == 1  # nothing registered
    here = load_dataset(grid.configs[0].data)[2]["fingerprint"]
    ok = ResultsStore(tmp_path / "ok.db")
    record(ok, grid.configs[0], sweep="s", meta=_meta(here))
    check_sweep_data(ok, grid.name, grid.configs, grid.run_ids)  # the same corpus: resumes


def test_a_run_resumed_from_a_checkpoint_of_another_corpus_is_refused(train_cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = train_cfg("train.checkpoint_every=5", "data.budget_bytes=200000")
    first = run(cfg)
    path = first.checkpoints[0][1]
    state = torch.load(path, weights_only=True)
    state["data"]["fingerprint"] = THERE
    save_checkpoint(tmp_path / "elsewhere.pt", {k: v for k, v in state.items() if k != "checksum"})  # a sound file
    with pytest.raises(DataError, match="trained on data with fingerprint bbbbbbbbbbbb"):
        run(cfg, resume_from=tmp_path / "elsewhere.pt")
    assert run(cfg, resume_from=path).status == "completed"  # its own corpus: resumes


def test_a_run_that_starts_beside_runs_of_another_corpus_in_its_sweep_fails_with_that_line(store_url):
    store = _store(store_url, fingerprints=(HERE,))
    with pytest.raises(StoreError, match="mixes corpora: runs .*fingerprints bbbbbbbbbbbb and aaaaaaaaaaaa"):
        record(store, make_config(lr=1e-2), sweep="s", meta=_meta(THERE))  # another machine, the same sweep
    late = store.runs().set_index("run_id").loc[store.register_runs([make_config(lr=1e-2)])[0]]
    assert late.status == "failed" and "mixes corpora" in late.error and late.meta is None
    record(store, make_config(lr=1e-2, seed=5), sweep="other", meta=_meta(THERE))  # a run of its own sweep: fine
