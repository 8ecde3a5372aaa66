"""`precisionlab formats` through the installed console script."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXE = shutil.which("precisionlab") or str(Path(sys.executable).with_name("precisionlab"))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], capture_output=True, text=True)


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
