"""The command line (precisionlab.cli): `precisionlab formats` through the installed console script,
and bad input across every command: each case exits 2 with exactly one line on stderr, no
traceback, and writes nothing into the working directory.

Most bad-input cases go through typer's CliRunner (in-process, fast); the console script's own
handling is tests/test_console.py. Config-key cases of train/sweep live in tests/test_config.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import CLI, MICRO, SWEEP_MICRO
from helpers.store import damage, store_with_pending_runs
from precisionlab.cli import app
from precisionlab.store import ResultsStore


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True)


def test_formats_table_lists_named_formats():
    proc = run("formats")
    assert proc.returncode == 0, proc.stderr
    elements, blocks = proc.stdout.split("\n\n")  # element formats, then block formats
    rows = {line.split()[0]: line.split() for line in elements.splitlines()[1:]}
    assert {"fp32", "bf16", "e4m3fn", "e5m2", "e2m1fn", "e8m3", "e7m7"} <= set(rows)
    assert rows["e4m3fn"][5] == "448" and rows["e5m2"][5] == "57344"
    block_rows = [line.split()[0] for line in blocks.splitlines()[1:]]
    assert block_rows == ["mxfp8", "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4", "nvfp4"]


def test_formats_describes_block_formats():
    proc = run("formats", "-f", "mxfp4", "-f", "nvfp4", "-f", "e2m1fn/b16x16/e4m3fn/tensor")
    assert proc.returncode == 0, proc.stderr
    header, *lines = proc.stdout.splitlines()
    assert header.split() == ["name", "element", "block", "scale", "rule", "bits/elem", "max", "min_subnormal", "binades"]
    assert lines[0].split() == ["mxfp4", "e2m1fn", "32", "e8m0", "floor", "4.25", "1.02e+39", "2.94e-39", "257.6"]
    assert lines[1].split() == ["nvfp4", "e2m1fn", "16", "e4m3fn", "+", "fp32", "tensor", "amax", "4.5", "2688",
                                "0.000976562", "21.4"]
    assert lines[2].split()[:3] == ["e2m1fn/b16x16/e4m3fn/tensor", "e2m1fn", "16x16"]


def test_formats_describes_any_parseable_format():
    proc = run("formats", "--format", "e6m9", "-f", "e3m3fnuz")
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[0] for line in proc.stdout.splitlines()[1:]] == ["e6m9", "e3m3fnuz"]


@pytest.mark.parametrize("name", ["e9m3", "fp7"])
def test_bad_format_is_one_line_exit_2(name):
    proc = run("formats", "--format", name)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and "accepted" in lines[0]


@pytest.mark.parametrize("args, message", [
    (["formats", "--nope"], "error: No such option: --nope (see precisionlab formats --help)"),
    (["bogus"], "error: No such command 'bogus'."),
    (["report", "--compare", "only-one"], "error: Option '--compare' requires 2 arguments."),
    (["sweep", "--jobs", "two"], "error: Invalid value for '--jobs'"),
])
def test_command_line_parse_errors_are_one_line_exit_2(args, message):
    proc = run(*args)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr


def test_help_still_exits_0():
    for args in ([], ["--help"], ["report", "--help"]):
        proc = run(*args)
        assert proc.returncode == 0 and "Usage: precisionlab" in proc.stdout, args


def test_version_is_pyprojects_everywhere():
    """One version: pyproject.toml's, as `precisionlab --version`, `precisionlab.__version__` and the
    provenance every run records all report it."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    declared = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["version"]
    proc = run("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"precisionlab {declared}"
    code = ("import precisionlab, precisionlab.runtime as r; "
            "print(precisionlab.__version__, r.provenance()['precisionlab'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [declared, declared]


@pytest.mark.parametrize("command, groups", [("train", ["model", "precision", "data", "optim"]), ("sweep", ["sweep"])])
def test_help_lists_every_preset(command, groups):
    """The help texts list each config group's presets from the configs folder, so they cannot fall behind it."""
    proc = run(command, "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.replace("│", " ").split())
    configs = Path(__file__).parents[1] / "configs"
    for group in groups:
        names = sorted(p.stem for p in (configs / group).glob("*.yaml"))
        assert len(names) >= 3 and all(name in text for name in names), (group, names)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Stores and files the cases point at (outside each case's working directory)."""
    root = tmp_path_factory.mktemp("inputs")
    store_with_pending_runs(root / "good.db").close()
    (root / "damaged.db").write_bytes((root / "good.db").read_bytes())
    damage(root / "damaged.db")
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
        # experiment trackers: unknown ones and malformed MLflow URIs, before anything is written
        (["train", "train.loggers=[tensorbord]", *MICRO], "train.loggers must be a list of tensorboard, mlflow, wandb"),
        (["sweep", "train.loggers=[mlflow]", "loggers.mlflow_uri=ftp://host", *SWEEP_MICRO], "loggers.mlflow_uri must be"),
        (["export", "--to", "neptune", "--store", good], "--to must be one of tensorboard, mlflow, wandb"),
        (["export", "--to", "tensorboard", "--store", good, "--sweep", "nope"], "unknown sweep 'nope'"),
        (["export", "--to", "mlflow", "--store", good, "--mlflow-uri", "http://"], "--mlflow-uri must name a host"),
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


def test_formats_table_shows_dash_for_values_a_format_lacks():
    result = CliRunner().invoke(app, ["formats", "-f", "e1m0", "-f", "e2m0", "-f", "e2m1fn"])
    assert result.exit_code == 0
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert rows["e1m0"][6:8] == ["-", "-"]        # neither normals nor subnormals: only zero
    assert rows["e2m0"][6:8] == ["1", "-"]        # no mantissa bits: no subnormals
    assert rows["e2m1fn"][6:8] == ["1", "0.5"]


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


def test_sharpness_accepts_comma_separated_eps(tmp_path, monkeypatch):
    """The README's `--metric logit,hessian --eps 1e-3,1e-2` (exit 2 before)."""
    monkeypatch.chdir(tmp_path)
    store_with_pending_runs(tmp_path / "s.db").close()
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
