"""The results store: run identity, round trips through DataFrames, resume
semantics, concurrent writers, and bad store paths. Tests taking `store` run on
both backends (an SQLite file, a database on a real PostgreSQL server)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from helpers.store import make_config, record
from precisionlab.store import ResultsStore, StoreError, run_id


# --------------------------------------------------------------------------- run identity


def test_run_id_ignores_order_and_non_semantic_keys():
    base = make_config()
    reordered = json.loads(json.dumps(base))
    reordered = {k: reordered[k] for k in reversed(list(reordered))}
    reordered["model"] = dict(reversed(list(reordered["model"].items())))
    moved = make_config(store={"path": "/elsewhere/x.db"}, sweep={"name": "other"}, hydra={"run": {"dir": "o"}},
                        checkpoint={"dir": "/scratch/ckpt", "every": 5})
    moved["train"].update(device="cuda", threads=8, progress=False)
    same_with_ckpt_every = make_config(checkpoint={"every": 5})
    assert run_id(base) == run_id(reordered)
    assert run_id(moved) == run_id(same_with_ckpt_every)
    # An independent recomputation: sha256 of sorted, compact JSON of {"identity": 2, "config": the
    # semantic part}: device and threads are not semantic; model.n_layer 2, optim.weight_decay 0.1
    # and seed 0 are at their neutral defaults.
    semantic = {"model": {"arch": "llama", "n_embd": 64}, "precision": {"format": "e8m3", "rounding": "toward_zero"},
                "optim": {"lr": 1e-3}, "train": {"steps": 20}}
    payload = json.dumps({"identity": 2, "config": semantic}, sort_keys=True, separators=(",", ":"))
    assert run_id(base) == hashlib.sha256(payload.encode()).hexdigest()[:16]


@pytest.mark.parametrize("change", [
    dict(lr=3e-3), dict(fmt="e8m4"), dict(seed=1), dict(checkpoint={"every": 5}),
])
def test_run_id_changes_with_semantic_keys(change):
    assert run_id(make_config(**change)) != run_id(make_config())


def test_omegaconf_config_is_stored_as_plain_json(store):
    from omegaconf import OmegaConf

    config = make_config(precision={"x": {"format": "e4m3"}, "w": "e4m3", "grad": "e5m2", "rounding": "nearest_even"},
                         grid=[1, 2])
    resolved = OmegaConf.create(config)
    assert run_id(resolved) == run_id(config)
    assert store.claim_run(run_id(resolved), resolved)
    run = store.runs().iloc[0]
    assert run["config"] == config
    assert (run["format_x"], run["format_w"], run["format_grad"]) == ("e4m3", "e4m3", "e5m2")


def test_columns_tolerate_missing_keys(store):
    config = {"seed": 3}
    assert store.claim_run(run_id(config), config)
    run = store.runs().iloc[0]
    assert run["seed"] == 3 and all(pd.isna(run[c]) for c in ("model", "format_x", "rounding", "lr"))


def test_run_id_sees_nested_semantic_change():
    changed = make_config()
    changed["model"]["n_layer"] = 3
    assert run_id(changed) != run_id(make_config())


# --------------------------------------------------------------------------- round trips


def test_run_and_metrics_round_trip(store):
    config = make_config(lr=3e-3, fmt="e8m5", seed=7)
    rid = record(store, config, steps=10, sweep="bits", checkpoint_every=5, spikes=2)

    runs = store.runs(sweep="bits")
    assert list(runs["run_id"]) == [rid]
    run = runs.iloc[0]
    assert run["config"] == config
    assert (run["model"], run["format_x"], run["format_w"], run["format_grad"], run["rounding"]) == \
        ("llama", "e8m5", "e8m5", "e8m5", "toward_zero")
    assert (run["lr"], run["seed"], run["status"], run["spikes"]) == (3e-3, 7, "completed", 2)
    # Outcome fields not given to finish() come from the logged curve.
    train = [10 - s / 10 for s in range(1, 11)]
    val = [10 - s / 20 for s in (5, 10)]
    assert run["steps_done"] == 10
    assert run["final_train_loss"] == pytest.approx(train[-1])
    assert run["initial_loss"] == pytest.approx(train[0])
    assert run["final_val_loss"] == pytest.approx(val[-1])
    assert run["min_val_loss"] == pytest.approx(min(val))
    assert run["meta"] == {"device": "cpu", "data_fingerprint": "abc"}
    assert run["torch_version"] and run["precisionlab_version"]
    assert run["finished"] >= run["started"] and run["wall_time"] >= 0

    expanded = store.runs(expand_config=True)
    assert expanded.loc[0, "config.optim.lr"] == 3e-3 and expanded.loc[0, "config.model.n_layer"] == 2

    metrics = store.metrics(sweep="bits")
    expected = pd.DataFrame({
        "run_id": rid, "step": list(range(1, 11)) + [5, 10], "split": ["train"] * 10 + ["val"] * 2,
        "loss": train + val,
    })
    pd.testing.assert_frame_equal(metrics[["run_id", "step", "split", "loss"]], expected, check_dtype=False)
    assert list(store.metrics(rid, split="train")["tokens"]) == [64 * s for s in range(1, 11)]

    checkpoints = store.checkpoints(sweep="bits")
    assert list(checkpoints["step"]) == [5, 10]
    assert all(os.path.isabs(p) for p in checkpoints["path"])
    assert store.latest_checkpoint(rid) == (10, os.path.abspath(f"ckpt/{rid}/10.pt"))


def test_extra_metrics_are_kept_as_json(store):
    config = make_config()
    rid = run_id(config)
    store.claim_run(rid, config)
    with store.recorder(rid) as rec:
        rec.log(1, "train", {"loss": 2.0, "spike": 1.0})
        rec.finish({"status": "completed"})
    assert json.loads(store.metrics(rid)["extra"].iloc[0]) == {"spike": 1.0}


def test_failed_and_diverged_outcomes(store):
    diverged = record(store, make_config(lr=1.0), steps=6, status="diverged", diverged_step=6,
                      final_train_loss=float("nan"))
    failed = record(store, make_config(lr=2.0), steps=3, status="failed", error="RuntimeError: boom")
    runs = store.runs().set_index("run_id")
    assert runs.loc[diverged, "status"] == "diverged" and runs.loc[diverged, "diverged_step"] == 6
    # NaN given explicitly means "unknown" and is derived from the curve instead.
    assert runs.loc[diverged, "final_train_loss"] == pytest.approx(10 - 6 / 10)
    assert runs.loc[failed, "status"] == "failed" and runs.loc[failed, "error"] == "RuntimeError: boom"
    assert list(store.runs(status=["diverged", "failed"])["run_id"].sort_values()) == sorted([diverged, failed])


def test_sharpness_round_trip_and_uniqueness(store):
    rid = record(store, make_config())
    store.add_sharpness(rid, 5, "logit_eps", 1.5, {"eps": 1e-3})
    store.add_sharpness(rid, 5, "logit_eps", 2.5, {"eps": 1e-3})  # same key: replaces
    store.add_sharpness(rid, 5, "logit_eps", 7.0, {"eps": 1e-2})  # other params: new row
    store.add_sharpness(rid, 10, "hessian_top", 42.0)
    df = store.sharpness(rid)
    assert len(df) == 3
    logit = store.sharpness(rid, metric="logit_eps").sort_values("value")
    assert list(logit["value"]) == [2.5, 7.0]
    assert list(logit["params"]) == [{"eps": 1e-3}, {"eps": 1e-2}]
    assert store.sharpness(sweep="none").empty


def test_diagnostics_round_trip_and_rerun_semantics(store):
    rid = record(store, make_config(), steps=10, checkpoint_every=6, status="failed", diagnostics=True)
    df = store.diagnostics(rid)
    assert list(df.columns) == ["run_id", "step", "site", "name", "value"]
    assert sorted(zip(df.step, df.site, df.name, df.value)) == [
        (5, "fc/fwd_x", "saturated", 0.05), (5, "model", "grad_cosine", 0.95),
        (10, "fc/fwd_x", "saturated", 0.1), (10, "model", "grad_cosine", 0.9)]
    assert store.diagnostics(name="grad_cosine").value.tolist() == [0.95, 0.9]
    assert store.diagnostics(sweep="elsewhere").empty
    assert store.claim_run(rid, make_config())  # a rerun resumes from step 6: later rows go
    assert store.diagnostics(rid).step.tolist() == [5, 5]
    with store.recorder(rid) as rec:
        rec.diagnostics(10, [("model", "grad_cosine", 0.5), ("model", "grad_cosine", 0.25)])  # same key: the last wins
        rec.finish({"status": "completed"})
    assert store.diagnostics(rid, name="grad_cosine").value.tolist() == [0.95, 0.25]
    assert store.claim_run(rid, make_config(), force=True) and store.diagnostics(rid).empty


def test_run_shared_by_two_sweeps_is_computed_once(store):
    config = make_config()
    rid = record(store, config, sweep="first")
    store.add_sweep("second", command="precisionlab sweep seed=0", grid={"seed": [0]})
    assert not store.claim_run(rid, config, "second")
    assert list(store.runs(sweep="second")["run_id"]) == [rid]
    assert len(store.metrics(sweep="second")) == len(store.metrics(sweep="first")) == 12
    sweeps = store.sweeps().set_index("name")
    assert sweeps.loc["second", "grid"] == {"seed": [0]} and list(sweeps["runs"]) == [1, 1]


def test_register_runs_makes_pending_rows(store):
    configs = [make_config(seed=s) for s in range(3)]
    ids = store.register_runs(configs, sweep="grid")
    runs = store.runs(sweep="grid")
    assert sorted(runs["run_id"]) == sorted(ids) and set(runs["status"]) == {"pending"}
    assert store.claim_run(ids[0], configs[0], "grid")  # pending -> must run


# --------------------------------------------------------------------------- resume


def test_completed_and_diverged_are_skipped_unless_forced(store):
    done = make_config(seed=1)
    diverged = make_config(seed=2)
    record(store, done)
    record(store, diverged, status="diverged")
    assert not store.claim_run(run_id(done), done)
    assert not store.claim_run(run_id(diverged), diverged)
    assert store.claim_run(run_id(done), done, force=True)
    run = store.runs().set_index("run_id").loc[run_id(done)]
    assert run["status"] == "running" and run["attempts"] == 2 and pd.isna(run["final_train_loss"])
    assert store.metrics(run_id(done)).empty  # force starts over


def test_failed_run_is_rerun(store):
    config = make_config()
    record(store, config, status="failed", error="OOM")
    assert store.claim_run(run_id(config), config)


def test_upsert_when_a_rerun_relogs_steps(store):
    config = make_config()
    rid = record(store, config, steps=10, status="failed", checkpoint_every=4)
    assert store.claim_run(rid, config)
    # Rows after the last checkpoint (step 8) are dropped: the resumed run logs them again.
    assert store.metrics(rid, split="train")["step"].max() == 8
    with store.recorder(rid) as rec:
        for step in (8, 9, 10, 10):  # step 8 overlaps what is stored; 10 twice in one batch
            rec.log(step, "train", {"loss": -step})
        rec.finish({"status": "completed"})
    train = store.metrics(rid, split="train")
    assert list(train["step"]) == list(range(1, 11))
    assert list(train["loss"].iloc[-3:]) == [-8, -9, -10]
    assert store.runs().iloc[0]["final_train_loss"] == -10


def test_killed_run_stays_running_keeps_rows_to_its_checkpoint_and_is_rerun(store):
    config = make_config()
    rid = run_id(config)
    script = textwrap.dedent(f"""
        import os, signal
        from precisionlab.store import ResultsStore
        store = ResultsStore({store.url!r})
        assert store.claim_run({rid!r}, {config!r}, "s")
        rec = store.recorder({rid!r}, flush_every=1000)
        for step in range(1, 21):
            rec.log(step, "train", {{"loss": float(step)}})
            if step == 12:
                rec.checkpoint(step, "ck12.pt")
        rec.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", script])
    assert done.returncode == -signal.SIGKILL
    assert store.status(rid) == "running"  # never shows as completed
    assert store.metrics(rid)["step"].max() == 20
    assert store.claim_run(rid, config, "s")
    assert list(store.metrics(rid)["step"]) == list(range(1, 13))
    assert store.latest_checkpoint(rid) == (12, os.path.abspath("ck12.pt"))


# --------------------------------------------------------------------------- concurrency


ROWS_PER_WORKER = 1000


def _write_run(path, seed, barrier):
    """A writer process: creates/opens the store, claims one run, logs many rows in small batches."""
    barrier.wait()
    store = ResultsStore(path)
    config = make_config(seed=seed)
    rid = run_id(config)
    assert store.claim_run(rid, config, "crowd")
    with store.recorder(rid, flush_every=8) as rec:
        rec.start({"worker": seed})
        for step in range(1, ROWS_PER_WORKER + 1):
            rec.log(step, "train", {"loss": seed + step / ROWS_PER_WORKER})
            if step % 500 == 0:
                rec.checkpoint(step, f"{rid}-{step}.pt")
        rec.finish({"status": "completed"})


@pytest.mark.slow
def test_concurrent_writers_lose_no_row(tmp_path, store_url):
    # the store is created by the writers themselves, all at once (in a missing folder for SQLite)
    path = str(tmp_path / "shared" / "crowd.db") if store_url.endswith(".db") else store_url
    workers = 16
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(workers)
    procs = [ctx.Process(target=_write_run, args=(path, seed, barrier)) for seed in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * workers  # no "database is locked", no assertion failed
    store = ResultsStore(path)
    metrics = store.metrics(sweep="crowd")
    assert len(metrics) == workers * ROWS_PER_WORKER
    runs = store.runs(sweep="crowd")
    assert list(runs["status"]) == ["completed"] * workers
    for seed in range(workers):
        rows = metrics[metrics["run_id"] == run_id(make_config(seed=seed))]
        assert list(rows["step"]) == list(range(1, ROWS_PER_WORKER + 1))
        assert rows["loss"].sum() == pytest.approx(sum(seed + s / ROWS_PER_WORKER for s in range(1, ROWS_PER_WORKER + 1)))
    assert len(store.checkpoints(sweep="crowd")) == workers * (ROWS_PER_WORKER // 500)
    if store.backend == "sqlite":
        assert sorted(os.listdir(tmp_path / "shared")) in (["crowd.db"], ["crowd.db", "crowd.db-shm", "crowd.db-wal"])


# --------------------------------------------------------------------------- bad stores


def _snapshot(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def test_not_a_database(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 20)
    before = _snapshot(tmp_path)
    with pytest.raises(StoreError, match=r"notes\.db: is not an SQLite database") as err:
        ResultsStore(path)
    assert "\n" not in str(err.value)
    assert _snapshot(tmp_path) == before


def test_sqlite_file_that_is_not_a_store(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x)")
    before = _snapshot(tmp_path)
    with pytest.raises(StoreError, match="not a precisionlab results store"):
        ResultsStore(path)
    assert _snapshot(tmp_path) == before


def test_newer_schema_is_refused_untouched(tmp_path):
    path = tmp_path / "future.db"
    store = ResultsStore(path)
    record(store, make_config())
    store.close()
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    conn.close()
    before = _snapshot(tmp_path)
    with pytest.raises(StoreError, match=r"future\.db: has schema version 99, newer than .* \(3\); upgrade"):
        ResultsStore(path)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("where", ["file_as_folder", "proc", "directory"])
def test_unusable_path_creates_nothing(tmp_path, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    path = {
        "file_as_folder": blocker / "sub" / "store.db",  # a folder on the way is a file
        "proc": "/proc/precisionlab-test/store.db",  # a folder nobody can create files in
        "directory": tmp_path,
    }[where]
    before = _snapshot(tmp_path)
    with pytest.raises(StoreError, match="results store .*: (cannot be created|is a directory)"):
        ResultsStore(path)
    assert _snapshot(tmp_path) == before
    assert not os.path.exists("/proc/precisionlab-test")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(StoreError, match="cannot be created"):
            ResultsStore(folder / "new" / "store.db")
        assert os.listdir(folder) == []
    finally:
        folder.chmod(0o755)


def test_new_store_creates_missing_folders_and_leaves_no_temp_files(tmp_path):
    store = ResultsStore(tmp_path / "a" / "b" / "store.db")
    record(store, make_config())
    store.close()
    assert os.listdir(tmp_path / "a" / "b") == ["store.db"]
    assert ResultsStore(tmp_path / "a" / "b" / "store.db").runs()["status"].tolist() == ["completed"]
