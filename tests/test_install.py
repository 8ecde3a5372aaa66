"""The base install is enough: every module of the package imports, and every command's --help
runs, in a virtual environment that has only `pip install torch==2.13.0 -e .` (no extras).

A dependency that only an extra brings (scipy once came only with `test`) breaks the quickstart
for every new user while the test suite, installed with its extras, stays green. These tests run
the base environment's own interpreter, named by PRECISIONLAB_BASE_PYTHON: `.ci/run` installs the
README's command 1 in a fresh venv and sets it. Without it they skip, saying how to run them;
with PRECISIONLAB_REQUIRE_BASE_PYTHON=1 (CI) a skip is a failure.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import precisionlab

ROOT = Path(precisionlab.__file__).resolve().parent.parent
EXTRAS = ("pytest", "ml_dtypes", "gfloat", "psycopg", "torchao", "hydra_plugins.hydra_submitit_launcher",
          "hydra_plugins.hydra_ray_launcher")


@pytest.fixture(scope="module")
def base_python() -> str:
    python = os.environ.get("PRECISIONLAB_BASE_PYTHON")
    if python and Path(python).is_file():
        return python
    why = ("PRECISIONLAB_BASE_PYTHON is not set to the python of a venv with only the base install "
           "(python3 -m venv B && B/bin/pip install torch==2.13.0 -e .; .ci/run does this)")
    if os.environ.get("PRECISIONLAB_REQUIRE_BASE_PYTHON") == "1":
        pytest.fail(why)
    pytest.skip(why)


def _run(python: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([python, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def test_the_base_environment_has_no_extra(base_python):
    """The check means something only if the environment lacks what the extras bring."""
    code = ("import importlib.util, sys\n"
            f"print(' '.join(m for m in {EXTRAS!r} if importlib.util.find_spec(m.split('.')[0]) and "
            "importlib.util.find_spec(m)))")
    present = _run(base_python, "-c", code)
    assert present.returncode == 0, present.stderr
    assert present.stdout.split() == []


def test_every_module_imports_with_the_base_install(base_python):
    code = ("import importlib, pkgutil, precisionlab, precisionlab.kernels, precisionlab.configs\n"
            "failed = []\n"
            "for package in (precisionlab, precisionlab.kernels):\n"
            "    for info in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
            "        try:\n"
            "            importlib.import_module(info.name)\n"
            "        except Exception as err:\n"
            "            failed.append(f'{info.name}: {type(err).__name__}: {err}')\n"
            "print('\\n'.join(failed) or 'ok')")
    result = _run(base_python, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok", result.stdout


def _commands(python: str) -> list[list[str]]:
    """Every command path of the Typer app, read from the app itself (so a new command is covered)."""
    code = ("import typer.main, precisionlab.cli as c\n"
            "def walk(group, path):\n"
            "    for name, cmd in getattr(group, 'commands', {}).items():\n"
            "        print(' '.join([*path, name]))\n"
            "        walk(cmd, [*path, name])\n"
            "walk(typer.main.get_command(c.app), [])")
    result = _run(python, "-c", code)
    assert result.returncode == 0, result.stderr
    return [line.split() for line in result.stdout.splitlines()]


def test_every_command_help_runs_with_the_base_install(base_python):
    commands = _commands(base_python)
    assert {"sweep", "train", "report", "sharpness", "formats"} <= {c[0] for c in commands}
    cli = str(Path(base_python).parent / "precisionlab")
    for command in [[], *commands]:
        result = _run(cli, *command, "--help")
        assert result.returncode == 0, f"precisionlab {' '.join(command)} --help: {result.stderr[-2000:]}"
        assert "Usage" in result.stdout


def test_a_missing_launcher_plugin_names_its_extra(base_python, tmp_path):
    """The Slurm and Ray launchers are extras: asking for one without it is one line naming the extra."""
    cli = str(Path(base_python).parent / "precisionlab")
    for launcher, extra in (("slurm", "slurm"), ("ray_cluster", "ray")):
        result = subprocess.run([cli, "sweep", f"hydra/launcher={launcher}", "train.steps=2", "seed=0"],
                                capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and f"precisionlab[{extra}]" in result.stderr, result.stderr
        assert list(tmp_path.iterdir()) == []  # nothing written



def test_a_postgres_store_without_psycopg_names_its_extra(base_python, tmp_path):
    cli = str(Path(base_python).parent / "precisionlab")
    for args in (["report", "--store", "postgresql://u@localhost/db"],
                 ["train", "store.url=postgresql://u@localhost/db", "train.steps=2"]):
        result = subprocess.run([cli, *args], capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and "precisionlab[postgres]" in result.stderr, result.stderr
        assert list(tmp_path.iterdir()) == []
