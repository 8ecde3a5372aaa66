"""`precisionlab sweep` (and `train`'s store records) through the installed console script,
in temporary working directories: grids, resume after SIGKILL, joblib == sequential, bad input."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import CLI, MICRO, SWEEP_MICRO
from precisionlab.cli import app
from precisionlab.store import ResultsStore, StoreError

STORE = Path("results") / "precisionlab.db"
# 2 formats x 2 LRs; lr=30 without clipping diverges within a few steps.
HALF_THE_CORES = max(1, len(os.sched_getaffinity(0)) // 2)
GRID = ["precision.format=e8m7,e8m3", "optim.lr=1e-3,30", "seed=3", "optim.grad_clip=0", *SWEEP_MICRO]


def _cli(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], cwd=cwd, capture_output=True, text=True, env=os.environ.copy(), timeout=timeout)


def _curves(store: ResultsStore) -> dict[tuple[str, str], list[tuple[int, float]]]:
    m = store.metrics()
    return {(rid, split): list(zip(g.step, g.loss)) for (rid, split), g in m.groupby(["run_id", "split"])}


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """The micro grid run once with the default (sequential) launcher, with the torch threads
    `--jobs 2` gives each run: float sums, so curves too, depend on the thread count."""
    cwd = tmp_path_factory.mktemp("sequential")
    return cwd, _cli(cwd, "sweep", *GRID, f"train.threads={HALF_THE_CORES}")


@pytest.mark.slow
def test_micro_grid_end_to_end(sequential):
    cwd, proc = sequential
    assert proc.returncode == 0, proc.stderr
    store = ResultsStore(cwd / STORE)
    runs = store.runs()
    assert len(runs) == 4
    assert sorted(zip(runs.format_x, runs.format_w, runs.format_grad, runs.lr, runs.seed, runs.status)) == [
        ("e8m3", "e8m3", "e8m3", 1e-3, 3, "completed"), ("e8m3", "e8m3", "e8m3", 30.0, 3, "diverged"),
        ("e8m7", "e8m7", "e8m7", 1e-3, 3, "completed"), ("e8m7", "e8m7", "e8m7", 30.0, 3, "diverged")]
    assert set(runs.rounding) == {"toward_zero"} and set(runs.model) == {"gpt2"}
    curves = _curves(store)
    for run in runs.itertuples():
        steps = [s for s, _ in curves[(run.run_id, "train")]]
        if run.status == "completed":
            assert steps == list(range(1, 9)) and run.steps_done == 8 and run.final_val_loss is not None
        else:
            # no early stop by default (train.divergence.rule=none): trained to the end, judged there
            assert steps == list(range(1, 9)) and run.diverged_step < 8
    sweep_name = store.sweeps().name.tolist()
    assert len(sweep_name) == 1 and sweep_name[0].startswith("default-")
    assert set(store.runs(sweep=sweep_name[0]).run_id) == set(runs.run_id)
    # per-run logs and curves in separate Hydra run directories
    run_dirs = {r["run_dir"] for r in runs.meta}
    assert len(run_dirs) == 4 and all((Path(d) / "run.log").is_file() and (Path(d) / "metrics.csv").is_file() for d in run_dirs)
    lines = proc.stdout.strip().splitlines()
    assert lines[-2:] == [
        f"sweep {sweep_name[0]}: 4 runs: 2 completed, 2 diverged, 0 failed",
        f"see the report (tables, plots, HTML): precisionlab report --sweep {sweep_name[0]}"]
    # the results table: formats by bits (e8m7 before e8m3), LRs ascending, diverged k/n, loss of finished runs
    loss = runs.set_index(["format_x", "lr"]).final_val_loss
    assert [line.split()[:3] for line in lines[-7:-2]] == [
        ["format", "lr", "diverged"], ["e8m7", "0.001", "0/1"], ["e8m7", "30", "1/1"], ["e8m3", "0.001", "0/1"], ["e8m3", "30", "1/1"]]
    assert lines[-6].split()[4] == f"{loss['e8m7', 1e-3]:.4f}" and lines[-5].split()[4] == "–"
    assert f"sweep {sweep_name[0]}: 4/4 runs done, 2 diverged, 0 failed" in proc.stderr
    assert "Traceback" not in proc.stderr

    again = _cli(cwd, "sweep", *GRID, f"train.threads={HALF_THE_CORES}")  # resume: everything is done already
    assert again.returncode == 0, again.stderr
    assert "4 runs, 4 already done, 0 to run" in again.stderr
    rerun = store.runs()
    assert list(rerun.attempts) == [1, 1, 1, 1] and _curves(store) == curves

    forced = _cli(cwd, "sweep", "--force", *GRID, f"train.threads={HALF_THE_CORES}")
    assert forced.returncode == 0, forced.stderr
    assert list(store.runs().attempts) == [2, 2, 2, 2] and _curves(store) == curves  # same seed, same curve


@pytest.mark.slow
def test_joblib_two_jobs_equals_sequential(sequential, tmp_path):
    cwd, proc = sequential
    assert proc.returncode == 0, proc.stderr
    parallel = subprocess.Popen([CLI, "sweep", "--jobs", "2", *GRID], cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    _, stderr = parallel.communicate(timeout=300)
    assert parallel.returncode == 0, stderr
    seq_store, par_store = ResultsStore(cwd / STORE), ResultsStore(tmp_path / STORE)
    seq, par = seq_store.runs().set_index("run_id"), par_store.runs().set_index("run_id")
    assert sorted(seq.index) == sorted(par.index)
    for column in ("status", "final_train_loss", "final_val_loss", "diverged_step", "steps_done"):
        assert seq[column].sort_index().equals(par[column].sort_index()), column
    assert _curves(seq_store) == _curves(par_store)
    # the runs ran in joblib worker processes, each with its share of the cores
    assert parallel.pid not in set(par.pid)
    assert {m["threads"] for m in par.meta} == {HALF_THE_CORES}


RESUME_GRID = ["precision.format=e8m7,e8m3", "optim.lr=1e-3", "seed=1", "train.threads=1", *SWEEP_MICRO,
               "train.steps=200", "train.checkpoint_every=20", "train.eval_every=50", "train.divergence.factor=10"]


def _store_when_created(location: str) -> ResultsStore | None:
    try:
        return ResultsStore(location, create=False)
    except StoreError:  # not created yet
        return None


@pytest.mark.slow
def test_resume_after_sigkill(tmp_path, store_url):
    """Kill -9 a whole sweep mid-run and rerun it, on both backends (SQLite through a relative
    sqlite:/// URL); the reference runs on the default SQLite store: curves don't depend on the store."""
    grid = RESUME_GRID
    killed_dir, reference_dir = tmp_path / "killed", tmp_path / "reference"
    killed_dir.mkdir(), reference_dir.mkdir()
    given = store_url if store_url.startswith("postgresql") else f"sqlite:///{STORE}"
    location = store_url if store_url.startswith("postgresql") else str(killed_dir / STORE)
    grid = [*grid, f"store.url={given}"]
    proc = subprocess.Popen([CLI, "sweep", *grid], cwd=killed_dir, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    store, victim, deadline = None, None, time.time() + 240
    try:
        while victim is None and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)  # a run checkpoints every 20 of its 200 steps: polling faster only loads the 2 cores
            if store is None:
                store = _store_when_created(location)
            if store is not None:
                running = set(store.runs(status="running").run_id)
                checkpointed = running & set(store.checkpoints().run_id)
                victim = next(iter(checkpointed), None)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole sweep, as a crash or `kill -9` would
        proc.wait()
    assert victim is not None, "the sweep finished or timed out before a run had a checkpoint"
    assert store.status(victim) == "running"  # interrupted, never shown as completed
    step, path = store.latest_checkpoint(victim)
    assert 20 <= step < 200

    resumed = _cli(killed_dir, "sweep", *grid)
    assert resumed.returncode == 0, resumed.stderr
    runs = store.runs().set_index("run_id")
    assert len(runs) == 2 and set(runs.status) == {"completed"}
    assert runs.attempts[victim] == 2
    assert runs.meta[victim]["resumed_from"] == path and runs.meta[victim]["start_step"] == step

    reference = _cli(reference_dir, "sweep", *RESUME_GRID)
    assert reference.returncode == 0, reference.stderr
    curves = _curves(store)
    assert [s for s, _ in curves[(victim, "train")]] == list(range(1, 201))  # none lost, none duplicated
    assert curves == _curves(ResultsStore(reference_dir / STORE))


@pytest.mark.slow
def test_server_restart_mid_sweep_loses_nothing(tmp_path, own_postgres_server):
    """The PostgreSQL server restarts (down 2 s) while a sweep trains: the sweep waits, goes on and
    finishes every run once, with the curves of an undisturbed sweep on SQLite."""
    url = own_postgres_server.url()
    store = ResultsStore(url)
    proc = subprocess.Popen([CLI, "sweep", *RESUME_GRID, f"store.url={url}"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not len(store.checkpoints()) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before its first checkpoint"
    own_postgres_server.restart(down_seconds=2.0)
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output
    runs = store.runs()
    assert len(runs) == 2 and set(runs.status) == {"completed"} and list(runs.attempts) == [1, 1]
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    assert _cli(reference_dir, "sweep", *RESUME_GRID).returncode == 0
    assert _curves(store) == _curves(ResultsStore(reference_dir / STORE))


# ---- bad input: one line on stderr, exit 2, nothing written


def _bad(tmp_path, monkeypatch, *args):
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    result = CliRunner().invoke(app, ["sweep", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert sorted(tmp_path.rglob("*")) == before  # nothing written
    return lines[0]


@pytest.mark.parametrize("args, expected", [
    (["train.stepz=5"], "train.stepz is not a config key; train takes steps, batch_size, "),
    (["train.stepz=1,2"], "train.stepz is not a config key; train takes steps, batch_size, "),
    (["seed=range(0)"], "the grid is empty: seed=range(0) gives no values"),
    (["precision.format=e8m7,e9m3"], "format 'e9m3' is out of range"),
    (["precision.format=e8m7,bf17"], "bf17"),
    (["optim.lr=1e-3,-1"], "optim.lr must be a positive number"),
    (["sweep=nope"], "Could not find 'sweep/nope'"),
    (["sweep=default,paper"], "sweep takes one value per sweep"),
    (["--jobs", "0"], "--jobs must be a positive number"),
    (["store.path=null"], "store.path is null"),
    (["--config-dir", "mine"], "precisionlab sweep takes Hydra overrides and only these Hydra flags: --cfg, "),
    (["store.journal_mode=fast"], "store.journal_mode must be one of wal, delete; got 'fast'"),
])
def test_bad_input(tmp_path, monkeypatch, args, expected):
    assert expected in _bad(tmp_path, monkeypatch, *args, *SWEEP_MICRO)


def test_unwritable_store_path(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("not a folder")
    line = _bad(tmp_path, monkeypatch, "store.path=afile/store.db", *SWEEP_MICRO)
    assert "cannot be created" in line and "afile" in line


def test_store_that_is_not_a_database(tmp_path, monkeypatch):
    (tmp_path / "results").mkdir()
    (tmp_path / STORE).write_bytes(b"these are my notes, not a database\n")
    line = _bad(tmp_path, monkeypatch, *SWEEP_MICRO)
    assert "is not an SQLite database" in line
    assert (tmp_path / STORE).read_bytes() == b"these are my notes, not a database\n"


def test_bad_input_through_the_console_script(tmp_path):
    proc = _cli(tmp_path, "sweep", "optim.lr=1e-3,0", *SWEEP_MICRO)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: optim.lr must be a positive number; got 0.0"]
    assert list(tmp_path.iterdir()) == []


# ---- precisionlab train writes the store too


@pytest.mark.slow
def test_train_records_into_the_store(tmp_path):
    first = _cli(tmp_path, "train", *MICRO, "precision=mask", "precision.format=e8m5")
    assert first.returncode == 0, first.stderr
    store = ResultsStore(tmp_path / STORE)
    (run,) = store.runs().itertuples()
    assert (run.status, run.format_x, run.steps_done) == ("completed", "e8m5", 10)
    (run_dir,) = (tmp_path / "outputs").glob("*/*")
    with open(run_dir / "metrics.csv") as f:
        rows = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f) if r["split"] == "train"]
    assert _curves(store)[(run.run_id, "train")] == rows  # the store and the run directory agree
    assert run.meta["run_dir"] == str(run_dir)

    second = _cli(tmp_path, "train", *MICRO, "precision=mask", "precision.format=e8m5")
    assert second.returncode == 0, second.stderr
    (again,) = store.runs().itertuples()  # the same run, computed again
    assert again.run_id == run.run_id and again.attempts == 2 and _curves(store)[(run.run_id, "train")] == rows

    off = tmp_path / "off"
    off.mkdir()
    assert _cli(off, "train", *MICRO, "store.path=null").returncode == 0
    assert not (off / "results").exists()


def test_train_with_an_unusable_store_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    proc = _cli(tmp_path, "train", *MICRO, "store.path=afile/x.db")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be created" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


# ---- cluster launchers: run only where their plugins are installed (pip install "precisionlab[slurm]" / "[ray]")


@pytest.mark.slow
@pytest.mark.parametrize("plugin, launcher", [
    ("hydra_plugins.hydra_submitit_launcher", ["hydra/launcher=submitit_local"]),  # Slurm's launcher, run locally
    ("hydra_plugins.hydra_ray_launcher", ["hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2",
                                          "+hydra.launcher.ray.remote.num_cpus=1"]),  # a local Ray instance
])
def test_cluster_launchers(tmp_path, plugin, launcher):
    pytest.importorskip(plugin)
    grid = ["precision.format=e8m7,e8m3", "optim.lr=1e-3", "seed=0", *SWEEP_MICRO]
    proc = subprocess.run([sys.executable, "-m", "precisionlab.cli", "sweep", *grid, *launcher], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    runs = ResultsStore(tmp_path / STORE).runs()
    assert len(runs) == 2 and set(runs.status) <= {"completed", "diverged"}
    if "ray" in plugin:
        assert {m["threads"] for m in runs.meta} == {1}  # ray.remote.num_cpus


@pytest.mark.slow
def test_full_file_system_mid_sweep_is_one_line_exit_1(tmp_path):
    """A sweep on a 1 MiB tmpfs (in a private mount namespace): it fills up with checkpoints mid-run.
    Before: ~96 stderr lines and 3 tracebacks (logging, Hydra's _save_config). Now one error line
    naming the file system, exit 1, and the store stays readable (a report of it works)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) here")
    disk = tmp_path / "disk"
    disk.mkdir()
    script = ('mount -t tmpfs -o size=1m tmpfs "$1" || exit 99; cd "$1"; "$2" sweep sweep.name=full seed=0,1,2 '
              f'train.checkpoint_every=1 {" ".join(SWEEP_MICRO)} 2>"$3/err.txt"; echo $? >"$3/rc.txt"; '
              '"$2" report --store results/precisionlab.db --out "$3/report" >/dev/null 2>"$3/report_err.txt"; '
              'echo $? >"$3/report_rc.txt"')
    proc = subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c", script, "sh", str(disk), CLI, str(tmp_path)],
                          capture_output=True, text=True)
    if proc.returncode == 99 or not (tmp_path / "rc.txt").exists():
        pytest.skip(f"no tmpfs in a mount namespace here: {proc.stderr.strip()[:200]}")
    err = (tmp_path / "err.txt").read_text()
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert (tmp_path / "rc.txt").read_text().strip() == "1", err
    assert len(errors) == 1 and f"no space left on the file system at {disk}" in errors[0], err
    assert "Traceback" not in err and "Logging error" not in err
    assert all(line.startswith(("sweep full: ", "error: ", "note: ")) for line in err.splitlines()), err
    assert (tmp_path / "report_rc.txt").read_text().strip() == "0", (tmp_path / "report_err.txt").read_text()
