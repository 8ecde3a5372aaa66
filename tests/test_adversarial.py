"""Bad input across every command (issue 17): each case exits 2 with exactly one line on stderr,
no traceback, and writes nothing into the working directory. Plus what the defects of that issue
left behind: unsafe sweep names, runs stuck `pending`, reports of unfinished sweeps, damaged and
read-only stores, leftovers of killed processes, concurrent `sharpness` processes.

Most cases go through typer's CliRunner (in-process, fast); `precisionlab.cli.main`, the console
entry, is exercised where Typer's own parse errors matter. Config-key cases of train/sweep live in
tests/test_config.py.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

from helpers import MICRO, SWEEP_MICRO, compose_train
from helpers.store import make_config, record
from precisionlab.analysis import render
from precisionlab.analysis.report import ReportError, build
from precisionlab.cli import app
from precisionlab.config import validate
from precisionlab.numerics.formats import FloatFormat
from precisionlab.quant.linear import convert_model
from precisionlab.store import ResultsStore, StoreError, run_id
from precisionlab.store.names import sweep_name_problem

CLI = str(Path(sys.executable).with_name("precisionlab"))
DEAD_PID = 2**22 + 12345  # above Linux's pid_max default: never a live process


def _store_with_pending_runs(path: Path, sweep: str = "p") -> ResultsStore:
    """A store holding a sweep of two registered (pending) micro runs."""
    store = ResultsStore(path)
    configs = [validate(compose_train("precision=mask", "precision.format=e8m3", f"optim.lr={lr}")) for lr in (1e-3, 3e-3)]
    store.add_sweep(sweep, command="test")
    store.register_runs(configs, sweep=sweep)
    return store


def _damage(path: Path) -> None:
    """Overwrite every page but the schema's and the meta table's: the store opens, reads fail."""
    with sqlite3.connect(path) as conn:
        keep = {1, *(r for n, r in conn.execute("SELECT name, rootpage FROM sqlite_master") if "meta" in n)}
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    data = bytearray(path.read_bytes())
    for page in range(2, len(data) // size + 1):
        if page not in keep:
            data[(page - 1) * size: page * size] = b"\x5a" * size
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Stores and files the cases point at (outside each case's working directory)."""
    root = tmp_path_factory.mktemp("inputs")
    _store_with_pending_runs(root / "good.db").close()
    (root / "damaged.db").write_bytes((root / "good.db").read_bytes())
    _damage(root / "damaged.db")
    (root / "header-only.db").write_bytes(b"SQLite format 3\x00" + b"junk" * 300)
    (root / "truncated.db").write_bytes((root / "good.db").read_bytes()[:100])
    (root / "text.db").write_text("hello")
    (root / "folder.db").mkdir()
    (root / "empty.db").write_bytes(b"")
    ResultsStore(root / "nosweeps.db").close()
    return root


def _cases(files: Path) -> list[tuple[list[str], str]]:
    """(command line, a fragment of the one error line)."""
    good, stores = str(files / "good.db"), {n: str(files / n) for n in (
        "damaged.db", "header-only.db", "truncated.db", "text.db", "folder.db", "empty.db", "nosweeps.db")}
    cases = [
        # formats: names have one spelling (lower-case ASCII, no spaces, no leading zeros)
        *[(["formats", "-f", name], "accepted: fp32") for name in (
            "E4M3", " e4m3", "e4m3 ", "e04m03", "e4m03", "e4m3\u0663", "e\u0664m3", "FP32", "Bf16", "e9m3", "e0m3",
            "e4m24", "e4m3fnx", "e4m3FN", "fp7", "", "e", "e4", "m3", "e4m", "e-1m3", "e4m-3", "e+4m3", "e4.0m3",
            "e4m3\n", "e4_m3", "ｅ4m3", "e" + "9" * 400 + "m3")],
        (["formats", "-f", "e4m3", "-f", "nope"], "unknown format 'nope'"),
        # block formats (issue 11): block size, scale format, rule, grammar
        *[(["formats", "-f", name], fragment) for name, fragment in (
            ("e2m1fn/b0/e8m0", "block size B must be a power of two"), ("e2m1fn/b24/e8m0", "must be a power of two"),
            ("e2m1fn/b16x3/e4m3fn", "block columns C must be a power of two"), ("e2m1fn/b32/e9m1", "unknown scale format"),
            ("e2m1fn/b32/e8m0/ceil", "unknown scale rule"), ("e2m1fn/b32/fp32/floor", "does not go with scale fp32"),
            ("e2m1fn/b32/e8m0/amax", "does not go with scale e8m0"), ("e2m1fn/b32/e8m0/tensor", "needs rule amax"),
            ("e2m1fn/b32", "ELEMENT/bB[xC]/SCALE"), ("mxfp3", "block formats: mxfp8"), ("MXFP4", "block formats: mxfp8"),
            ("e2m1fn/b32/e8m0/floor/x", "too many parts"), ("e2m1fn/b99999999999999999999/e8m0", "power of two"))],
        *[(["train", f"precision.format={name}", "train.steps=1"], f"'{name}'") for name in (
            "e2m1fn/b0/e8m0", "e2m1fn/b24/e8m0", "e2m1fn/b32/e9m1", "e2m1fn/b32/fp32/rceil", "mxfp3")],
        # six operand casts, Hadamard transforms, kept layers (issue 11)
        *PRECISION_CASES,
        # stores: what a --store path is, and damaged files
        *[([cmd, "--store", stores[name]], fragment) for cmd in ("report", "sharpness") for name, fragment in (
            ("damaged.db", "the file is damaged; move it aside"), ("header-only.db", "cannot be read as SQLite"),
            ("truncated.db", "cannot be read as SQLite"), ("text.db", "is not an SQLite database"),
            ("folder.db", "is a folder, not a results store file"), ("empty.db", "is not an SQLite database"),
            ("nosweeps.db", "holds no sweeps"))],
        *[([cmd, "--store", path], fragment) for cmd in ("report", "sharpness") for path, fragment in (
            ("/dev/null", "is not a regular file"), ("missing.db", "does not exist"), ("", "store location '' is empty"))],
        # report
        (["report", "--store", good, "--sweep", "nope"], "unknown sweep 'nope'"),
        (["report", "--store", good, "--where", "colour=red"], "unknown column 'colour'"),
        (["report", "--store", good, "--where", "__import__('os').system('touch x')"], "not a usable filter"),
        (["report", "--store", good, "--where", "lr.__class__ == 1"], "not a usable filter"),
        (["report", "--store", good, "--where", "seed=abc"], "seed takes numbers"),
        (["report", "--store", good, "--where", "format=e5m2"], "has no runs matching"),
        (["report", "--store", good, "--compare", "p", "nope"], "unknown sweep 'nope'"),
        (["report", "--store", good, "--compare", "p", "p", "--sweep", "p"], "exclude each other"),
        # lists are for in / not in: == and the others compared them with the rows by position (issue 32)
        *[(["report", "--store", good, "--where", where], "not a usable filter") for where in (
            "seed == [0, 0, 0, 0]", "lr == [0.003, 0, 0, 0]", "seed == [0, 0]", "lr == [0.001, 0.003]", "[0, 0] == seed", "seed != [0, 1]", "lr < [1, 1]",
            "seed in [[0, 1]]", "[0] in seed")],
        (["report", "--store", good, "--compare", "p", "p"], "names one sweep twice"),
        (["report", "--store", good, "--out", "/proc/precisionlab-report"], "--out"),
        (["report", "--store", good, "--out", "."], "is the working directory"),
        # sharpness
        (["sharpness", "--store", good, "--metric", "nope"], "nope"),
        (["sharpness", "--store", good, "--metric", "logit,"], ""),
        (["sharpness", "--store", good, "--sweep", "nope"], "unknown sweep 'nope'"),
        *[(["sharpness", "--store", good, "--eps", eps], "--eps must be finite numbers >= 0") for eps in (
            "x", "1e-3,x", "-1", "1e-3,-1e-3", "nan", "inf", "1e-3,,1e-2")],
        (["sharpness", "--store", good, "--batch-size", "0"], "--batch-size must be a positive integer"),
        (["sharpness", "--store", good, "--batch-size", "99999999", "--device", "cpu"], "lower --batch-size"),  # issue 32
        (["sharpness", "--store", good, "--iters", "0"], "--iters must be a positive integer"),
        (["sharpness", "--store", good, "--tol", "0"], "--tol must be a number > 0"),
        (["sharpness", "--store", good, "--tol", "nan"], "--tol must be a number > 0"),
        (["sharpness", "--store", good, "--samples", "1"], "--samples must be an integer >= 2"),
        (["sharpness", "--store", good, "--ascent-steps", "0"], "--ascent-steps must be a positive integer"),
        (["sharpness", "--store", good, "--device", "tpu"], "device"),
        # sweep: names that would be paths, and stores that cannot be used
        *[(["sweep", f"sweep.name={name}", *SWEEP_MICRO], "is not usable as a folder name") for name in (
            "../../../escaped", "/tmp/abs", "a/b", "..", ".hidden", "-dash", "a..b", "x" * 101, "'a b'", "'ä'", "'a;b'")],
        (["sweep", "store.path=" + stores["damaged.db"], *SWEEP_MICRO], "the file is damaged"),
        (["sweep", "store.path=" + stores["folder.db"], *SWEEP_MICRO], "is a directory"),
        (["sweep", "--jobs", "0"], "--jobs must be a positive number"),
        # store URLs whose password a URL cannot hold as typed: refused without echoing it
        *[([cmd, *args], fragment) for cmd, args, fragment in (
            ("sweep", ["store.url=postgresql://me:pa/ss@127.0.0.1:5432/db", *SWEEP_MICRO], "must percent-encode (%2F"),
            ("train", ["store.url=postgresql://me:pa@ss@127.0.0.1:5432/db", *MICRO], "must percent-encode (%2F"),
            ("sweep", ["store.url=postgresql://me:pa%ss@127.0.0.1:5432/db", *SWEEP_MICRO], "write % as %25"),
            ("report", ["--store", "postgresql://me:pa/ss@127.0.0.1:5432/db"], "must percent-encode (%2F"),
            ("sharpness", ["--store", "postgresql://me:pa%ss@127.0.0.1:5432/db"], "write % as %25"))],
        # train: data that has no window of seq_len + 1 tokens is refused before any run directory
        (["train", "data=text", "data.path=/dev/null", *MICRO], "is not a regular file or folder"),
        (["train", "train.seq_len=100000000", "train.steps=1"], "lower train.batch_size or train.seq_len"),
        (["train", "data=text", "data.path=tiny.txt", *MICRO], "fewer than train.seq_len + 1"),
        (["train", "store.path=" + stores["damaged.db"], *MICRO], "the file is damaged"),
        # a store location that can only name a folder is not made a file of that name (issue 32)
        (["train", "store.path=results/", *MICRO], "names a folder, not a file"),
        (["train", "store.url=sqlite:///results/", *MICRO], "names a folder, not a file"),
        (["sweep", "store.path=results/", *SWEEP_MICRO], "names a folder, not a file"),
        (["report", "--store", "results/"], "names a folder, not a file"),
        (["store", "copy", good, "results/"], "names a folder, not a file"),
        # store copy: refused before the destination exists
        (["store", "copy", good, "copy.db", "--sweep", "nope"], "unknown sweep 'nope'"),
        (["store", "copy", stores["nosweeps.db"], "copy.db"], "holds no sweeps"),
        # flags Hydra would answer with its usage text or a traceback; runs that could never end or fit
        (["train", "--foo"], "takes Hydra overrides and only these Hydra flags"),
        (["train", "-m", "seed=1"], "a grid of runs: precisionlab sweep"),
        (["sweep", "--foo", *SWEEP_MICRO], "takes Hydra overrides and only these Hydra flags"),
        (["sweep", "hydra/launcher=joblib", "hydra.launcher.n_jobs=0", *SWEEP_MICRO], "hydra.launcher.n_jobs must be"),
        (["train", "seed=true"], "seed must be an integer"),
        (["train", "train.steps=1e20"], "train.steps must be an integer"),
        (["train", "train.steps=100000000000"], "train.steps must be at most"),
        (["train", "train.batch_size=1000000000"], "lower train.batch_size or train.seq_len"),
        (["sweep", "train.batch_size=1000000000", *SWEEP_MICRO[:3]], "lower train.batch_size or train.seq_len"),
    ]
    return cases


def _snapshot(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_the_catalogue_is_broad(files):
    assert len(_cases(files)) >= 60


@pytest.mark.slow
def test_every_bad_input_is_one_line_exit_2_nothing_written(files, tmp_path, monkeypatch):
    """Each case in a fresh working directory; all of them, then a list of those that misbehaved."""
    failures = []
    for i, (args, fragment) in enumerate(_cases(files)):
        cwd = tmp_path / f"case{i}"
        cwd.mkdir()
        (cwd / "tiny.txt").write_text("too short")
        before = _snapshot(cwd)
        monkeypatch.chdir(cwd)
        result = CliRunner().invoke(app, args)
        lines = result.stderr.strip().splitlines()
        problems = []
        if result.exit_code != 2:
            problems.append(f"exit {result.exit_code}")
        if len(lines) != 1 or not lines[0].startswith("error: ") or fragment not in lines[0]:
            problems.append(f"stderr {result.stderr!r}")
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            problems.append(f"raised {result.exception!r}")
        if _snapshot(cwd) != before:
            problems.append(f"wrote {sorted(set(_snapshot(cwd)) - set(before))}")
        if problems:
            failures.append(f"{args}: {'; '.join(problems)}")
    assert not failures, "\n".join(failures)


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ["sharpness", "--eps", "oops", "--store", "missing.db"],
    ["report", "--store", "missing.db"],
    ["formats", "-f", "E4M3"],
])
def test_console_script_one_line_no_traceback(tmp_path, args):
    proc = subprocess.run([CLI, *args], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- formats (defect 10)


@pytest.mark.parametrize("name", ["E4M3", " e4m3", "e04m03", "e4m3\u0663", "FP32"])
def test_format_names_have_one_spelling(name):
    with pytest.raises(ValueError, match="accepted: fp32"):
        FloatFormat.parse(name)


def test_formats_table_shows_dash_for_values_a_format_lacks():
    result = CliRunner().invoke(app, ["formats", "-f", "e1m0", "-f", "e2m0", "-f", "e2m1fn"])
    assert result.exit_code == 0
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert rows["e1m0"][6:8] == ["-", "-"]        # neither normals nor subnormals: only zero
    assert rows["e2m0"][6:8] == ["1", "-"]        # no mantissa bits: no subnormals
    assert rows["e2m1fn"][6:8] == ["1", "0.5"]


def test_exclude_matching_no_layer_warns(caplog):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with caplog.at_level(logging.WARNING, logger="precisionlab.quant.linear"):
        convert_model(model, {"format": "e4m3", "exclude": ["lm_haed", "1"]})
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "'lm_haed' matches no linear layer" in warnings[0]
    assert type(model[1]) is nn.Linear and type(model[0]) is not nn.Linear  # "1" did exclude layer 1


# --------------------------------------------------------------------------- sweep names (defect 3)


@pytest.mark.parametrize("name, ok", [
    ("default", True), ("default-3fa2c1", True), ("paper_rne.v2", True), ("A1", True),
    ("../../../escaped", False), ("/abs", False), ("a/b", False), ("a\\b", False), ("..", False), ("a..b", False),
    (".hidden", False), ("-x", False), ("", False), ("x" * 101, False), ("é", False), ("a\nb", False), ("a b", False),
])
def test_sweep_name_alphabet(name, ok):
    assert (sweep_name_problem(name) is None) == ok


def test_report_never_uses_an_unsafe_stored_name_as_a_path(tmp_path, monkeypatch):
    """A store written by other means may hold any name: the report refuses to make it a folder."""
    monkeypatch.chdir(tmp_path)
    _store_with_pending_runs(tmp_path / "s.db", sweep="../../escaped").close()
    result = CliRunner().invoke(app, ["report", "--store", "s.db"])
    assert result.exit_code == 2 and "is not usable as a folder name" in result.stderr and "--out" in result.stderr
    assert not (tmp_path.parent / "escaped").exists() and not (tmp_path / "reports").exists()
    result = CliRunner().invoke(app, ["report", "--store", "s.db", "--out", "mine"])  # the user's own path: fine
    assert result.exit_code == 0, result.output
    assert (tmp_path / "mine" / "report.html").is_file()


def test_report_file_names_from_the_store_stay_inside_out(tmp_path):
    with pytest.raises(ReportError, match="plain names inside --out"):
        render._write_files({"sharpness_../../x.png": b"png"}, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- unfinished sweeps (defects 4, 5)


def test_report_of_a_sweep_without_finished_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _store_with_pending_runs(tmp_path / "s.db").close()
    result = CliRunner().invoke(app, ["report", "--store", "s.db"])
    assert result.exit_code == 0, result.output
    assert "2 runs (2 pending)" in result.stdout and "no finished runs yet" in result.stdout
    written = {p.name for p in (tmp_path / "reports" / "p").iterdir()}
    assert {"report.html", "report.md", "runs.csv"} <= written and not any(n.endswith(".png") for n in written)


def test_job_failing_before_its_claim_is_recorded_failed(tmp_path, monkeypatch):
    """A store that refuses the claim (e.g. made read-only mid-sweep): before, the run stayed pending."""
    from hydra import compose, initialize_config_module
    from hydra.core.hydra_config import HydraConfig

    from precisionlab.sweep import job

    store = _store_with_pending_runs(tmp_path / "s.db")
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


@pytest.mark.slow
def test_sweep_with_runs_left_pending_exits_1(tmp_path, monkeypatch):
    """Jobs that could not even record their failure leave runs pending: the sweep says so and exits 1."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ResultsStore, "claim_run", lambda *a, **k: (_ for _ in ()).throw(StoreError("locked out")))
    monkeypatch.setattr(ResultsStore, "fail_pending", lambda *a, **k: (_ for _ in ()).throw(StoreError("locked out")))
    result = CliRunner().invoke(app, ["sweep", "seed=0,1", "precision.format=e8m3", "optim.lr=1e-3",
                                      "sweep.name=stuck", *SWEEP_MICRO])
    assert result.exit_code == 1, result.output
    assert "sweep stuck: 2 runs not finished: 2 never started" in result.stderr


# --------------------------------------------------------------------------- stores (defects 6, 9b, 10)


def test_damaged_store_reads_and_writes_raise_store_error(files, tmp_path):
    path = tmp_path / "d.db"
    path.write_bytes((files / "damaged.db").read_bytes())
    store = ResultsStore(path)  # the schema pages are intact: it opens
    for call in (store.sweeps, lambda: store.runs(), lambda: store.status("x"),
                 lambda: store.add_sweep("q"), lambda: store.latest_checkpoint("x")):
        with pytest.raises(StoreError, match="the file is damaged; move it aside"):
            call()


def test_read_only_store_is_reported(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _store_with_pending_runs(tmp_path / "s.db").close()
    os.chmod(tmp_path / "s.db", 0o444)
    access = os.access  # root may write anything: the store is what the user may not write
    monkeypatch.setattr(os, "access", lambda p, mode: access(p, mode) and not (str(p).endswith("s.db") and mode & os.W_OK))
    with pytest.raises(StoreError, match=r"is read-only \(no write permission\)"):
        ResultsStore(tmp_path / "s.db")  # writers are still refused up front
    result = CliRunner().invoke(app, ["report", "--store", "s.db"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "reports" / "p" / "report.html").is_file()


def test_read_only_store_object_never_writes(tmp_path):
    _store_with_pending_runs(tmp_path / "s.db").close()
    store = ResultsStore(tmp_path / "s.db", read_only=True)
    assert len(store.runs()) == 2
    with pytest.raises(StoreError, match="readonly"):
        store.add_sweep("q")
    with pytest.raises(StoreError, match="does not exist"):
        ResultsStore(tmp_path / "absent.db", read_only=True)
    assert not (tmp_path / "absent.db").exists()


def test_creation_removes_temp_files_of_killed_creators(tmp_path):
    dead = [tmp_path / f"precisionlab.db.{DEAD_PID}.0123abcd.tmp{suffix}" for suffix in ("", "-wal", "-shm")]
    live = tmp_path / f"precisionlab.db.{os.getpid()}.89abcdef.tmp"  # a creator still at work: left alone
    for path in (*dead, live):
        path.write_bytes(b"half a store")
    ResultsStore(tmp_path / "precisionlab.db").close()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["precisionlab.db", live.name])


# --------------------------------------------------------------------------- report swap (defect 9c)


def _report_files(out: Path) -> dict[str, bytes]:
    """The report's files in `out` (its marker file aside: every report folder holds one)."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != render.MARKER}


def test_report_swap_replaces_the_whole_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "reports" / "p"
    render._write_files({"report.html": "old", "sharpness_logit.png": b"old"}, out)
    render._write_files({"report.html": "new", "runs.csv": "new"}, out)
    assert _report_files(out) == {"report.html": b"new", "runs.csv": b"new"}  # no stale sharpness plot
    assert sorted(p.name for p in out.parent.iterdir()) == ["p"]  # no staging folder left


def test_report_refuses_a_folder_with_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ReportError, match=r"holds files that are not a report's \(notes.txt\)"):
        render._write_files({"report.html": "new"}, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_kill_during_report_leaves_nothing_behind_next_time(tmp_path, monkeypatch):
    """What a `report` killed while writing or swapping leaves, as a dead process's files: its staging
    folder (new or old files), the legacy staging folder inside out, and an old report moved aside
    when the kill fell between the two renames of the fallback swap."""
    monkeypatch.chdir(tmp_path)
    reports = tmp_path / "reports"
    out = reports / "p"
    render._write_files({"report.html": "old"}, out)
    (reports / f".p.report-{DEAD_PID}-0123abcd").mkdir()
    (reports / f".p.report-{DEAD_PID}-0123abcd" / "report.html").write_text("half")
    (reports / f".q.report-{os.getpid()}-0123abcd").mkdir()  # another report's, alive: left alone
    (out / ".report-x1y2z3").mkdir()  # the old code's staging folder (tempfile name, no pid)
    render._write_files({"report.html": "new"}, out)
    assert _report_files(out) == {"report.html": b"new"}
    assert sorted(p.name for p in reports.iterdir()) == [f".q.report-{os.getpid()}-0123abcd", "p"]
    # killed between the fallback's two renames: no out, the whole old report aside
    os.rename(out, reports / f".p.old-{DEAD_PID}-89abcdef")
    render._clean_stale(out)
    assert _report_files(out) == {"report.html": b"new"}


def test_report_that_fails_to_render_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = build(_store_with_pending_runs(tmp_path / "s.db"))
    monkeypatch.setattr(render.plots, "figures", lambda r: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        render.write(report, tmp_path / "reports" / "p")
    assert not (tmp_path / "reports").exists()


# --------------------------------------------------------------------------- sharpness claims (defect 10)


def test_sharpness_claims_split_the_work(tmp_path):
    store = _store_with_pending_runs(tmp_path / "s.db")
    other = ResultsStore(tmp_path / "s.db")
    rid = store.runs().run_id.iloc[0]
    assert store.claim_sharpness(rid, 4, "logit", {"eps": 1e-3}) == "claimed"
    with sqlite3.connect(tmp_path / "s.db") as conn:  # as if a live other process held it: this test's parent
        conn.execute("UPDATE sharpness_claims SET pid=?", (os.getppid(),))
    conn.close()
    assert other.claim_sharpness(rid, 4, "logit", {"eps": 1e-3}) == "busy"
    assert other.claim_sharpness(rid, 4, "logit", {"eps": 1e-2}) == "claimed"  # other parameters: other work
    with sqlite3.connect(tmp_path / "s.db") as conn:  # the claimer dies: its claim is taken over
        conn.execute("UPDATE sharpness_claims SET pid=? WHERE params LIKE '%0.001%'", (DEAD_PID,))
    conn.close()
    assert other.claim_sharpness(rid, 4, "logit", {"eps": 1e-3}) == "claimed"
    other.add_sharpness(rid, 4, "logit", 1.5, {"eps": 1e-3})
    other.release_sharpness(rid, 4, "logit", {"eps": 1e-3})
    assert store.claim_sharpness(rid, 4, "logit", {"eps": 1e-3}) == "done"


def test_sharpness_accepts_comma_separated_eps(tmp_path, monkeypatch):
    """The README's `--metric logit,hessian --eps 1e-3,1e-2` (exit 2 before)."""
    monkeypatch.chdir(tmp_path)
    _store_with_pending_runs(tmp_path / "s.db").close()
    seen = {}

    def fake(store, name, metrics, settings, **kwargs):
        seen.update(metrics=metrics, eps=settings.eps)
        from precisionlab.sweep.sharpness import Outcome
        return Outcome(unreadable=[])

    monkeypatch.setattr("precisionlab.sweep.sharpness.measure_checkpoints", fake)
    result = CliRunner().invoke(app, ["sharpness", "--store", "s.db", "--metric", "logit,hessian",
                                      "--eps", "1e-3,1e-2", "--eps", "0.1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert seen == {"metrics": ["logit", "hessian"], "eps": (1e-3, 1e-2, 0.1)}


# --------------------------------------------------------------------------- joblib workers (defect 9d)


def test_launcher_worker_exits_when_its_parent_dies(tmp_path):
    """A worker process whose sweep is killed ends itself (before: it trained on, reparented)."""
    script = textwrap.dedent("""
        import multiprocessing, os, sys, time
        from precisionlab.sweep.launchers import exit_with_parent

        def worker():
            exit_with_parent(interval=0.05)
            time.sleep(120)

        if __name__ == "__main__":
            child = multiprocessing.get_context("fork").Process(target=worker, name="LokyProcess-1")
            child.start()
            print(child.pid, flush=True)
            os._exit(0)  # the sweep dies without a word to its worker
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    pid = int(proc.stdout)
    deadline = time.monotonic() + 30
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(pid)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


# --------------------------------------------------------------------------- operands, Hadamard, keep (issue 11)

# `precisionlab train` with these overrides (and train.steps=1): each fails validation, before training
PRECISION_CASES = [(["train", *args, "train.steps=1"], fragment) for args, fragment in (
    (["precision.hadamard.size=24"], "precision.hadamard.size must be 0 (off) or one of 16, 32, 128; got 24"),
    (["precision=mxfp4", "precision.hadamard.size=128", "precision.hadamard.gemms=[fwd]", "model.n_embd=96", "model.n_head=4"],
     "precision.hadamard.size=128 must divide the fwd GEMM's reduction axis"),
    (["precision=nvfp4", "precision.hadamard.gemms=[dgrad]", "model.n_embd=40", "model.n_head=4"],
     "precision.hadamard.size=16 must divide the dgrad GEMM's reduction axis"),
    (["precision=nvfp4", "train.batch_size=3", "train.seq_len=7"], "precision.hadamard.size=16 must divide the wgrad GEMM's"),
    (["precision.hadamard.size=16"], "precision.hadamard.size=16 rotates GEMM operands before their casts, but every operand is fp32"),
    (["precision.hadamard.gemms=[foo]"], "precision.hadamard.gemms must be a non-empty list of fwd, dgrad, wgrad"),
    (["precision.hadamard.size=16", "precision.hadamard.gemms=[]"], "precision.hadamard.gemms must be a non-empty list"),
    (["precision.hadamard.signs=random"], "precision.hadamard.signs must be one of fixed, per_call"),
    (["precision.operands.fwd_q.format=e4m3"], "precision.operands.fwd_q"),
    (["precision.operands.fwd_x.format=e2m1fn/b0/e8m0"], "precision.operands.fwd_x.format: block format 'e2m1fn/b0/e8m0'"),
    (["precision.operands.fwd_x.rounding=up"], "precision.operands.fwd_x.rounding must be one of"),
    (["precision.operands.fwd_x.scaling=block"], "precision.operands.fwd_x.scaling must be one of none, tensor"),
    (["precision.operands.fwd_x.colour=red"], "precision.operands.fwd_x.colour"),
    (["precision.keep.last=-1"], "precision.keep.last must be an integer >= 0"),
    (["precision.keep.first=1.5"], "precision.keep.first"),
    (["precision.keep.format=e9m9"], "precision.keep.format: format 'e9m9'"),
    (["precision.format=e2m1fn/b32/e9m9"], "precision.format: block format 'e2m1fn/b32/e9m9': unknown scale format 'e9m9'"),
    (["precision.format=e2m1fn/b32/e8m0/amax"], "precision.format: block format 'e2m1fn/b32/e8m0/amax': scale rule 'amax'"),
    # 2-D blocks need a 2-D tensor: x (batch, seq, in) and attention's 4-D tensors refuse them up front
    *[([f"{key}={name}"], f"{key.removeprefix('precision.')}: block format '{name}' has 2-D blocks") for key, name in (
        ("precision.format", "e2m1fn/b16x16/e4m3fn/tensor"), ("precision.format", "e2m1fn/b32x32/e4m3fn/tensor"),
        ("precision.x", "e2m1fn/b16x16/e4m3fn/tensor"),
        ("precision.operands.fwd_x.format", "e2m1fn/b16x16/e4m3fn/tensor"),
        ("precision.keep.format", "e2m1fn/b16x16/e4m3fn/tensor"),
        ("precision.attention.format", "e2m1fn/b16x16/e4m3fn/tensor"),
        *[(f"precision.attention.{t}.format", "e2m1fn/b32x32/e4m3fn/tensor") for t in ("q", "k", "p", "v")])],
)]


@pytest.mark.parametrize("args, fragment", PRECISION_CASES, ids=[" ".join(a[1:-1]) for a, _ in PRECISION_CASES])
def test_bad_precision_settings_are_one_line_exit_2(args, fragment, tmp_path, monkeypatch):
    """The catalogue's checks for the new precision keys alone (the catalogue itself is slow)."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert "Traceback" not in result.output and (result.exception is None or isinstance(result.exception, SystemExit))
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- checkpoints that are not what they claim
# (a file another run wrote in its place, a damaged file, a parent whose weights do not load into the branch)


def _flip_a_weight_bit(path: Path) -> None:
    """Flip one exponent bit of a float in the largest tensor stored in checkpoint `path` (torch's zip
    stores tensors uncompressed): the file stays a loadable checkpoint, one weight changes."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    data[start + 4 * (info.file_size // 8) + 3] ^= 0x40  # the high byte of a little-endian float32 in the middle
    path.write_bytes(bytes(data))


def _stored_run(store: ResultsStore, checkpoint_dir: Path, *overrides: str):
    """A 10-step micro run recorded into `store`, checkpoint at step 4 -> (its config, its result)."""
    from precisionlab.sweep.job import recorded_run
    from precisionlab.train.rundir import RunDirRecorder

    cfg = validate(compose_train(*overrides, "train.checkpoint_steps=[4]", f"train.checkpoint_dir={checkpoint_dir}"))
    result = recorded_run(cfg, store, RunDirRecorder(checkpoint_dir.parent / "rundirs" / str(len(store.runs()))),
                          force=True)
    assert result.status == "completed"
    return cfg, result


@pytest.fixture(scope="module")
def parents(tmp_path_factory):
    """A store of parent runs (checkpoint at step 4): a tied-weights parent, an untied one, one whose
    checkpoint holds another run's state, one whose checkpoint is damaged."""
    from precisionlab.store import run_id

    root = tmp_path_factory.mktemp("parents")
    store = ResultsStore(root / "parents.db")
    ids = {name: run_id(_stored_run(store, root / name, *overrides)[0]) for name, overrides in (
        ("tied", []), ("untied", ["model.tie_weights=false"]), ("overwritten", ["seed=1"]), ("damaged", ["seed=2"]))}
    path = {name: store.checkpoints(rid).path.iloc[0] for name, rid in ids.items()}
    shutil.copyfile(path["tied"], path["overwritten"])  # another run's file in its place
    _flip_a_weight_bit(Path(path["damaged"]))
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

    from precisionlab.sweep.job import recorded_run
    from precisionlab.train.rundir import RunDirRecorder

    class StopsAtStep6(RunDirRecorder):  # a run that dies after its step-4 checkpoint (recorded `failed`)
        def log(self, step, split, metrics):
            if step == 6:
                raise RuntimeError("killed")
            super().log(step, split, metrics)

    store = ResultsStore(tmp_path / "r.db")
    (cfg_a, whole), (cfg_b, _) = _stored_run(store, tmp_path / "a"), _stored_run(store, tmp_path / "b", "seed=1")
    a_id = run_id(cfg_a)
    assert recorded_run(cfg_a, store, StopsAtStep6(tmp_path / "killed"), force=True).status == "failed"
    a_file, b_file = (store.checkpoints(run_id(cfg)).path.iloc[0] for cfg in (cfg_a, cfg_b))
    shutil.copyfile(b_file, a_file)  # B's state in A's file
    rerun = recorded_run(cfg_a, store, RunDirRecorder(tmp_path / "rerun"))  # a failed run resumes from its checkpoint if it can
    assert rerun.status == "completed"
    assert (rerun.final_val_loss, rerun.final_train_loss) == (whole.final_val_loss, whole.final_train_loss)
    assert store.metrics(a_id, split="train").step.tolist() == list(range(1, 11))


@pytest.mark.slow
def test_sharpness_never_measures_another_runs_or_a_damaged_checkpoint(tmp_path, monkeypatch):
    """Checkpoints holding another run's state, or a flipped bit, are reported (exit 1) and measured under no run."""
    from precisionlab.sweep.job import recorded_run
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
    _flip_a_weight_bit(files[2])
    store.close()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["sharpness", "--store", str(tmp_path / "r.db"), "--metric", "logit"])
    assert result.exit_code == 1, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: checkpoint not measured")]
    assert len(warnings) == 2 and str(files[1]) in warnings[0] + warnings[1] and str(files[2]) in warnings[0] + warnings[1]
    assert any("holds run" in w for w in warnings) and any("is damaged" in w for w in warnings)
    measured = ResultsStore(tmp_path / "r.db").sharpness()
    assert set(measured.run_id) == {ids[0]}


@pytest.mark.slow
def test_runs_sharing_a_checkpoint_dir_write_files_of_their_own(tmp_path):
    """Two runs given one absolute train.checkpoint_dir (the defect: the second overwrote the first's
    step_0000004.pt): each saves under a folder named by its run id."""
    from precisionlab.store import run_id

    store = ResultsStore(tmp_path / "r.db")
    shared = tmp_path / "checkpoints"
    configs = [_stored_run(store, shared, f"seed={seed}")[0] for seed in (0, 1)]
    paths = [Path(store.checkpoints(run_id(cfg)).path.iloc[0]) for cfg in configs]
    assert paths == [shared / run_id(cfg) / "step_0000004.pt" for cfg in configs]
    assert all(torch.load(p, weights_only=True)["run_id"] == run_id(cfg) for p, cfg in zip(paths, configs))


@pytest.mark.parametrize("url", ["postgresql://me:Xy7/Qk4@127.0.0.1:5432/db", "postgresql://me:Xy7@Qk4@127.0.0.1:5432/db",
                                 "postgresql://me:Xy7%Qk4@127.0.0.1:5432/db", "postgresql://me:Xy7:Qk4@127.0.0.1:x/db"])
@pytest.mark.parametrize("command", ["sweep", "train", "report"])
def test_a_store_url_password_is_not_echoed_in_errors(url, command, tmp_path, monkeypatch):
    """Malformed URLs whose password holds '/', '@', '%' or ':': one line, exit 2, no piece of the password."""
    monkeypatch.chdir(tmp_path)
    args = {"sweep": [f"store.url={url}", *SWEEP_MICRO], "train": [f"store.url={url}", *MICRO],
            "report": ["--store", url]}[command]
    result = CliRunner().invoke(app, [command, *args])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Xy7" not in result.output and "Qk4" not in result.output, lines[0]
    assert list(tmp_path.iterdir()) == []


def test_a_store_url_with_a_password_in_a_config_is_refused():
    """A password that reached the composed config (a config file; the command line's is taken out first)
    would be written into run.json and checkpoints: refused in one line, before anything runs."""
    from precisionlab.store.url import configured_store

    with pytest.raises(StoreError, match="holds a password, which would be written into run folders") as err:
        configured_store({"store": {"url": "postgresql://me:s3cr%2Fet@db:5432/runs", "path": None}})
    assert "s3cr" not in str(err.value)
    assert configured_store({"store": {"url": "postgresql://me@db:5432/runs", "path": None}}) == "postgresql://me@db:5432/runs"
@pytest.mark.parametrize("key", ["precision.w", "precision.grad", "precision.operands.dgrad_w.format",
                                 "precision.operands.wgrad_x.format", "precision.weight_grad"])
def test_two_d_blocks_stay_accepted_on_two_d_operands(key):
    """The refusal above is for the operands cast from a tensor of rank > 2 only."""
    validate(compose_train(f"{key}=e2m1fn/b16x16/e4m3fn/tensor"))


# --------------------------------------------------------------------------- files outside what was asked (issue 32)


def _one_line_exit_2(result, fragment: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("through_link", [True, False])
def test_report_never_replaces_a_users_folder_named_like_a_report(tmp_path, monkeypatch, through_link):
    """A folder holding a report.md and runs.csv of the user's own: before, it was replaced and they were lost."""
    monkeypatch.chdir(tmp_path)
    _store_with_pending_runs(tmp_path / "s.db").close()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes")
    (mine / "runs.csv").write_text("my,data")
    if through_link:
        (tmp_path / "out").symlink_to(mine)
    result = CliRunner().invoke(app, ["report", "--store", "s.db", "--out", "out" if through_link else "mine"])
    _one_line_exit_2(result, "symbolic link" if through_link else "did not write")
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == {"report.md": b"my notes", "runs.csv": b"my,data"}
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("s.db")) == sorted(
        ["mine", *(["out"] if through_link else [])])


def test_report_out_through_a_dangling_link_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _store_with_pending_runs(tmp_path / "s.db").close()
    (tmp_path / "out").symlink_to(tmp_path / "nowhere" / "target")
    (tmp_path / "up").symlink_to(tmp_path / "gone")
    for out, fragment in (("out", "symbolic link"), ("up/r", "is a symbolic link to a missing folder")):
        _one_line_exit_2(CliRunner().invoke(app, ["report", "--store", "s.db", "--out", out]), fragment)
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "gone").exists()


def test_report_replaces_its_own_earlier_report(tmp_path, monkeypatch):
    """The marker is what lets a report replace its folder (and a report from before the marker too)."""
    monkeypatch.chdir(tmp_path)
    _store_with_pending_runs(tmp_path / "s.db").close()
    for _ in range(2):
        result = CliRunner().invoke(app, ["report", "--store", "s.db", "--out", "r"])
        assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / render.MARKER).is_file() and (tmp_path / "r" / "report.md").is_file()
    (tmp_path / "r" / render.MARKER).unlink()  # as an older precisionlab wrote it: recognised by its page
    assert CliRunner().invoke(app, ["report", "--store", "s.db", "--out", "r"]).exit_code == 0
    (tmp_path / "r" / "report.html").write_text("<html>my own page</html>")
    (tmp_path / "r" / render.MARKER).unlink()
    _one_line_exit_2(CliRunner().invoke(app, ["report", "--store", "s.db", "--out", "r"]), "did not write")


# --------------------------------------------------------------------------- store copy, read-only stores (issue 32)


def test_store_copy_into_a_link_to_its_source_is_refused(tmp_path, monkeypatch):
    """A destination that is the source through a symbolic link: before, the store was copied into itself."""
    monkeypatch.chdir(tmp_path)
    _store_with_pending_runs(tmp_path / "s.db").close()
    (tmp_path / "link.db").symlink_to(tmp_path / "s.db")
    before = (tmp_path / "s.db").read_bytes()
    _one_line_exit_2(CliRunner().invoke(app, ["store", "copy", "s.db", "link.db"]), "the same results store")
    assert (tmp_path / "s.db").read_bytes() == before


def test_store_copy_to_a_newer_store_leaves_no_files_beside_either(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _store_with_pending_runs(tmp_path / "s.db").close()
    _store_with_pending_runs(tmp_path / "new.db").close()
    with sqlite3.connect(tmp_path / "new.db") as conn:
        conn.execute("UPDATE meta SET value='999' WHERE key='schema_version'")
    conn.close()
    _one_line_exit_2(CliRunner().invoke(app, ["store", "copy", "s.db", "new.db"]), "newer than this precisionlab reads")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.db", "s.db"]  # no -wal/-shm (the source's neither)


def _read_only_mount(folder: Path, *command: str) -> subprocess.CompletedProcess:
    """`command` run where `folder` is a read-only bind mount of itself (a private mount namespace:
    the mount vanishes with the process). Skips where mount namespaces are not available."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) here")
    script = f'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && touch "$1/probe" 2>/dev/null && exit 99; shift; exec "$@"'
    proc = subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c", script, "sh", str(folder), *command],
                          capture_output=True, text=True, cwd=folder.parent)
    if proc.returncode == 99 or (proc.returncode != 0 and "unshare" in proc.stderr):
        pytest.skip(f"no read-only bind mount here: {proc.stderr.strip()[:200]}")
    return proc


@pytest.mark.slow
def test_healthy_store_on_a_read_only_file_system(tmp_path):
    """A WAL store (no -wal file) on a read-only bind mount: readers read it, writers are told it is
    read-only. Before, every command called it damaged: SQLite could not create its -shm file."""
    ro = tmp_path / "ro"
    ro.mkdir()
    _store_with_pending_runs(ro / "s.db").close()
    assert sorted(p.name for p in ro.iterdir()) == ["s.db"]
    report = _read_only_mount(ro, CLI, "report", "--store", str(ro / "s.db"), "--out", str(tmp_path / "r"))
    assert report.returncode == 0, report.stderr
    assert "2 runs (2 pending)" in report.stdout and (tmp_path / "r" / "report.md").is_file()
    copy = _read_only_mount(ro, CLI, "store", "copy", str(ro / "s.db"), str(tmp_path / "copy.db"))
    assert copy.returncode == 0, copy.stderr
    for args in (["sharpness", "--store", str(ro / "s.db"), "--device", "cpu"],
                 ["sweep", f"store.path={ro / 's.db'}", *SWEEP_MICRO]):
        proc = _read_only_mount(ro, CLI, *args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, proc.stderr
        assert "is read-only (a read-only file system)" in lines[0] and "damaged" not in lines[0]
    assert sorted(p.name for p in ro.iterdir()) == ["s.db"]


# --------------------------------------------------------------------------- report.md content (issue 32)


def test_report_md_renders_names_values_and_command_as_text(tmp_path, monkeypatch):
    """Names, config values and the command line holding HTML and Markdown: a CommonMark renderer
    (markdown-it-py, as independent oracle) shows them as the text they are, no tag of their own;
    a backtick in a value does not end its code span. Before, <script> and <img onerror> went into
    report.md raw, and report.html escaped them."""
    import html as html_module

    from markdown_it import MarkdownIt
    monkeypatch.chdir(tmp_path)
    sweep, command = "x`y*z*", "precisionlab sweep 'a=<img src=x onerror=alert(1)>' b=`c`"
    labels = ["<script>alert(1)</script>", "_[link](http://evil)_ | cell"]
    store = ResultsStore(tmp_path / "s.db")
    store.add_sweep(sweep, command=command)
    for label, rounding in zip(labels, ("toward_zero", "nearest_even")):  # one format, two recipes: named by label
        for seed in (0, 1):
            record(store, make_config(seed=seed, precision={"name": label, "format": "e8m3", "rounding": rounding},
                                      data={"path": "<img src=y onerror=alert(2)>.txt"}), sweep=sweep)
    store.close()
    result = CliRunner().invoke(app, ["report", "--store", "s.db", "--out", "r"])
    assert result.exit_code == 0, result.output
    rendered = MarkdownIt("commonmark").enable("table").render((tmp_path / "r" / "report.md").read_text())
    assert "<script" not in rendered and "onerror" not in re.sub(r"onerror=alert\(\d\)&gt;", "", rendered) and "<a " not in rendered
    assert all((tmp_path / "r" / src).is_file() for src in re.findall(r'<img src="([^"]*)"', rendered))  # ours only
    text = html_module.unescape(re.sub(r"<[^>]+>", "", rendered))
    assert command in text and all(label in text for label in labels), text[:2000]
    assert f"<h1>Sweep <code>{html_module.escape(sweep, quote=False)}</code></h1>" in rendered


# --------------------------------------------------------------------------- signals, concurrent runs (issue 32)


@pytest.mark.parametrize("race", [False, True])
def test_second_train_of_a_running_run_leaves_nothing(tmp_path, monkeypatch, race):
    """Another live process trains the run: one line, exit 2, and no Hydra run folder (before, one was
    left). race: both `train`s passed the CLI's check before either claimed; the claim refuses it."""
    monkeypatch.chdir(tmp_path)
    args = [*MICRO, "precision=mask", "precision.format=e8m3", f"store.path={tmp_path / 's.db'}"]
    store = ResultsStore(tmp_path / "s.db")
    cfg = validate(compose_train(*args[len(MICRO):]))
    assert store.claim_run(run_id(cfg), cfg)  # this process: alive, heartbeat now
    if race:
        monkeypatch.setattr(ResultsStore, "running", lambda self, ids: (set(), set()))
    result = CliRunner().invoke(app, ["train", *args])
    _one_line_exit_2(result, "is being trained by another live process")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("s.db")) == []
    assert store.status(run_id(cfg)) == "running"


def _mapped(pid: int, library: str) -> bool:
    try:
        with open(f"/proc/{pid}/maps") as f:
            return library in f.read()
    except OSError:
        return False


@pytest.mark.slow
def test_interrupt_during_imports_is_one_line_exit_130(tmp_path):
    """SIGINT while the console script imports torch, Hydra, pandas: before, a 25-49 line
    KeyboardInterrupt traceback. Sent once torch's library is mapped (the imports are under way;
    the interpreter's own start-up, before any precisionlab code runs, is Python's), and later."""
    for extra in (0.0, 0.1, 0.3):
        proc = subprocess.Popen([CLI, "formats"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not _mapped(proc.pid, "libtorch") and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(extra)
        proc.send_signal(2)
        out, err = proc.communicate(timeout=60)
        if proc.returncode == 0:  # finished before the signal: nothing to judge
            continue
        assert proc.returncode == 130, (extra, err)
        assert err.strip().splitlines() == ["error: interrupted"], (extra, err)
        assert list(tmp_path.iterdir()) == []


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


# --------------------------------------------------------------------------- an unreachable server (issue 32)


def test_unreachable_server_gets_one_retry_window_said_once(own_postgres_server, monkeypatch, capsys):
    """Every write path waited out its own retry window (a sweep: ~7 x 300 s, silent). Now the
    process's transactions share one window per outage, and stderr says once that retries are under
    way. The window comes from $PRECISIONLAB_STORE_RETRY_SECONDS here (3 s)."""
    from precisionlab.store.database import RETRY_ENV

    monkeypatch.setenv(RETRY_ENV, "3")
    first, second = ResultsStore(own_postgres_server.url()), ResultsStore(own_postgres_server.url())
    assert first.retry_seconds == second.retry_seconds == 3.0
    capsys.readouterr()
    own_postgres_server.stop()
    started = time.monotonic()
    with pytest.raises(StoreError, match="still unreachable"):
        first.runs()
    assert 3.0 <= time.monotonic() - started < 15
    started = time.monotonic()
    with pytest.raises(StoreError, match="still unreachable"):
        second.add_sweep("other write path")  # the window is spent: no second one
    assert time.monotonic() - started < 2.0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: results store ") and "retrying for up to 3 s" in err[0], err
    assert own_postgres_server.password not in err[0]


def test_store_retry_seconds_setting_is_checked(monkeypatch, tmp_path):
    from precisionlab.store.database import RETRY_ENV

    monkeypatch.setenv(RETRY_ENV, "soon")
    with pytest.raises(StoreError, match="must be a number of seconds >= 0; got 'soon'"):
        ResultsStore(tmp_path / "s.db")
