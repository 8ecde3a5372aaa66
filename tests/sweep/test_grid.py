"""A sweep runs the grid that was typed, says what it will run (`--dry-run` writes nothing), warns
where a preset is changed or grid points are one run, and labels a changed preset as such.

The formats each preset casts are written out below from configs/precision/*.yaml (docs/concepts/recipes.md's
presets table), independently of the code that composes them."""

from __future__ import annotations

import re
import shlex
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from helpers import SWEEP_MICRO
from precisionlab.analysis.labels import display_label, label_runs
from precisionlab.cli import app
from precisionlab.store import ResultsStore
from precisionlab.store.identity import canonical
from precisionlab.sweep.launchers import missing_plugin
from precisionlab.sweep.plan import plan

ROOT = Path(__file__).resolve().parents[2]
# The user-facing text that shows commands: the README and the documentation site's pages.
USER_DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

# (x, w, grad) of each preset, from its yaml file
BF16 = ("bf16",) * 3
MXFP8 = ("e4m3fn/b32/e8m0/rceil",) * 3
MXFP4 = ("mxfp4",) * 3
NVFP4 = ("nvfp4", "e2m1fn/b16x16/e4m3fn/tensor", "nvfp4")
FP8 = ("e4m3fn", "e4m3fn", "e5m2")
DEEPSEEK = ("e4m3fn/b128/fp32", "e4m3fn/b128x128/fp32", "e4m3fn/b128/fp32")


# the grids of configs/sweep/default.yaml and paper.yaml, written out
DEFAULT_FORMATS = ("e8m7", "e8m3", "e8m0", "e5m7", "e4m7")
PAPER_FORMATS = ("e8m7", "e8m6", "e8m5", "e8m4", "e8m3", "e8m2", "e8m1", "e8m0", "e7m7", "e6m7", "e5m7", "e4m7")

def mask(fmt: str) -> tuple[str, str, str]:
    return (fmt,) * 3


def _casts(grid) -> Counter:
    return Counter((c.precision.x, c.precision.w, c.precision.grad) for c in grid.configs)


def test_the_grid_is_what_was_typed(tmp_path):
    """The reproduction: the default grid's precision.format axis no longer leaks into a grid of presets."""
    grid = plan(["precision=bf16,mxfp4,nvfp4", "optim.lr=3e-3", "seed=0,1"], cwd=tmp_path)
    assert len(grid.configs) == len(grid.runs) == 6
    got = sorted((c.precision.name, c.precision.x, c.precision.w, c.precision.grad, c.seed) for c in grid.configs)
    assert got == sorted((name, *casts, seed) for name, casts in (("bf16", BF16), ("mxfp4", MXFP4), ("nvfp4", NVFP4))
                         for seed in (0, 1))
    assert {c.precision.rounding for c in grid.configs} == {"nearest_even"}  # the presets', not mask's
    assert {c.optim.lr for c in grid.configs} == {3e-3}
    assert set(grid.params) == {"precision", "seed"} and grid.warnings == []
    assert any("precision.format" in note for note in grid.notes)  # the left-out axis is said
    # what Hydra launches is that grid, without the grid config's axes
    assert "hydra.sweeper.params=null" in grid.launch_overrides
    assert not any(o.startswith("precision.format") for o in grid.launch_overrides)


def test_a_named_grid_keeps_its_axes_and_a_typed_preset_keeps_its_formats(tmp_path):
    seeds = plan(["sweep=default", "seed=0,1,2,3"], cwd=tmp_path)  # the default grid, four seeds
    assert len(seeds.runs) == 20 and _casts(seeds) == Counter({mask(f): 4 for f in DEFAULT_FORMATS})
    assert {c.seed for c in seeds.configs} == {0, 1, 2, 3}
    paper = plan(["sweep=paper", "precision=bf16,mxfp8", "optim.lr=1e-2", "seed=0"], cwd=tmp_path)
    assert _casts(paper) == Counter({BF16: 1, MXFP8: 1})
    assert [n for n in paper.notes if "precision.format" in n and "precision=bf16,mxfp8" in n]
    assert {c.sharpness.every for c in paper.configs} == {10}  # the paper grid's settings stay
    alone = plan(["precision=fp8"], cwd=tmp_path)  # no axis typed: the default grid, its format axis left out
    assert _casts(alone) == Counter({FP8: 6})


def test_a_partly_overridden_preset_and_a_collapsed_grid_warn(tmp_path):
    partial = plan(["precision=nvfp4", "precision.x=e8m7,nvfp4", "seed=0"], cwd=tmp_path)
    assert len(partial.warnings) == 1
    assert "precision.x=e8m7,nvfp4" in partial.warnings[0] and "precision=nvfp4" in partial.warnings[0]
    collapsed = plan(["train.threads=1,2", "seed=0,1"], cwd=tmp_path)  # threads: not part of what a run computes
    assert len(collapsed.run_ids) == 4 and len(collapsed.runs) == 2
    assert len(collapsed.warnings) == 1
    assert "train.threads=1" in collapsed.warnings[0] and "train.threads=2" in collapsed.warnings[0]
    twice = plan(["optim.lr=1e-2,0.01"], cwd=tmp_path)  # one LR spelt twice
    assert len(twice.runs) == 1 and len(twice.warnings) == 1 and "optim.lr=0.01" in twice.warnings[0]
    clean = plan(["precision.format=e8m7,e8m3", "seed=0,1"], cwd=tmp_path)  # mask from the grid config: no warning
    assert clean.warnings == []


def _listing(output: str) -> pd.DataFrame:
    """The run list of `--dry-run` (stdout), cut at its header's column starts."""
    lines = output.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("run id"))
    head = lines[at]
    names, starts, at_column = ["run id", "status", "x", "w", "grad", "label", "grid point"], [], 0
    for name in names:
        at_column = head.index(name, at_column)
        starts.append(at_column)
        at_column += len(name)
    rows = [[line[a:b].strip() for a, b in zip(starts, [*starts[1:], None])] for line in lines[at + 1:] if line.strip()]
    return pd.DataFrame(rows, columns=names)


def test_dry_run_lists_every_run_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["sweep", "--dry-run", "precision=bf16,nvfp4", "seed=0,1", *SWEEP_MICRO]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert list(tmp_path.iterdir()) == []  # no store, no run folder, no multirun folder
    runs = _listing(result.stdout)
    assert len(runs) == 4 and set(runs.status) == {"new"}
    assert Counter(zip(runs.x, runs.w, runs.grad)) == Counter({BF16: 2, NVFP4: 2})
    assert re.search(r"\b4 runs\b", result.stdout) and "precision" in result.stdout
    # with a store: each run's status there, and the store is left as it was
    grid = plan(args[2:], cwd=tmp_path)
    store = ResultsStore(tmp_path / "results" / "precisionlab.db")
    store.register_runs(grid.configs[:1], sweep="earlier")
    store.close()
    before = {p: p.read_bytes() for p in (tmp_path / "results").iterdir()}
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    listed = _listing(again.stdout).set_index("run id").status
    assert listed[grid.run_ids[0]] == "pending" and (listed.drop(grid.run_ids[0]) == "new").all()
    assert "1 already in the store" in again.stdout
    db = tmp_path / "results" / "precisionlab.db"
    assert db.read_bytes() == before[db]  # a reader's -wal/-shm (SQLite's, not ours) may appear, with nothing in the log
    assert all(p == db or (p.name in {db.name + "-wal", db.name + "-shm"} and (p.name.endswith("-shm") or not p.stat().st_size))
               for p in (tmp_path / "results").iterdir())
    assert not (tmp_path / "multirun").exists()


def test_a_changed_preset_is_never_labelled_by_its_bare_name(tmp_path):
    changed = plan(["precision=nvfp4,nvfp4_no_rht,mxfp4,bf16", "precision.format=e8m7", "seed=0"], cwd=tmp_path)
    exact = plan(["precision=nvfp4,nvfp4_no_rht,mxfp4,bf16", "seed=0"], cwd=tmp_path)
    configs = changed.configs + exact.configs
    runs = label_runs(pd.DataFrame({
        "run_id": [f"r{i}" for i in range(len(configs))],
        "config": [canonical(c, semantic=False) for c in configs],
        "format_x": [c.precision.x for c in configs], "format_w": [c.precision.w for c in configs],
        "format_grad": [c.precision.grad for c in configs], "status": "completed",
        "initial_loss": 5.5, "final_val_loss": 3.0}))
    labels = [display_label(v) for v in runs.variant]
    names = [c.precision.name for c in configs]
    for label, name, cfg in zip(labels[:4], names[:4], changed.configs):
        assert label != name and cfg.precision.format == "e8m7"
    assert "nvfp4+format=e8m7" in labels and "nvfp4_no_rht+format=e8m7" in labels
    assert labels[4:] == ["nvfp4", "nvfp4_no_rht", "mxfp4", "bf16"]  # the presets themselves: their names
    assert len(set(runs.variant)) == 8  # eight distinct casts, eight variants


# Every `precisionlab sweep` command in the README and docs/: its run count and the (x, w, grad) it casts,
# written out from the grids (configs/sweep/*.yaml) and presets above.
DEFAULT = (30, {mask(f): 6 for f in DEFAULT_FORMATS})
PAPER = (108, {mask(f): 9 for f in PAPER_FORMATS})
EXPECTED = {
    "precisionlab sweep": DEFAULT,
    "precisionlab sweep --jobs 2": DEFAULT,
    "precisionlab sweep --dry-run": DEFAULT,
    "precisionlab sweep precision=bf16,mxfp8,nvfp4 seed=0,1": (6, {BF16: 2, MXFP8: 2, NVFP4: 2}),
    "precisionlab sweep seed=7": (5, {mask(f): 1 for f in DEFAULT_FORMATS}),
    "precisionlab sweep precision=bf16,mxfp4,nvfp4 optim.lr=3e-3 seed=0,1": (6, {BF16: 2, MXFP4: 2, NVFP4: 2}),
    "precisionlab sweep --dry-run precision=bf16,mxfp4,nvfp4 optim.lr=3e-3 seed=0,1": (6, {BF16: 2, MXFP4: 2, NVFP4: 2}),
    "precisionlab sweep sweep=paper --jobs 2": PAPER,
    "precisionlab sweep precision.format=e8m7,e8m5,e8m3 optim.lr=1e-3,3e-3,1e-2 seed=0,1":
        (18, {mask(f): 6 for f in ("e8m7", "e8m5", "e8m3")}),
    "precisionlab sweep precision=fp8 precision.format=e4m3fn,e5m2 optim.lr=1e-3,3e-3 seed=0,1,2 model=small":
        (12, {FP8: 6, ("e5m2",) * 3: 6}),
    "precisionlab sweep sweep.name=bits store.path=results/bits.db train.steps=500": DEFAULT,
    "precisionlab sweep seed=0,1,2,3": (4, {mask("e8m7"): 4}),
    "precisionlab sweep sweep=default seed=0,1,2,3": (20, {mask(f): 4 for f in DEFAULT_FORMATS}),
    "precisionlab sweep sweep=paper hydra/launcher=slurm hydra.launcher.partition=gpu hydra.launcher.timeout_min=600 "
    "store.url=postgresql://precisionlab@db-host:5433/precisionlab": PAPER,
    "precisionlab sweep hydra/launcher=ray +hydra.launcher.ray.init.num_cpus=2 +hydra.launcher.ray.remote.num_cpus=1":
        DEFAULT,
    "precisionlab sweep sweep=paper hydra/launcher=ray_cluster hydra.launcher.ray.remote.num_cpus=4 "
    "store.url=postgresql://precisionlab@db-host:5433/precisionlab": PAPER,
    "precisionlab sweep sharpness.every=10 'sharpness.metrics=[logit,keskar]' sharpness.eps=1e-3": DEFAULT,
    "precisionlab sweep sweep=fp4 precision=bf16,mxfp8,mxfp4,nvfp4 optim.lr=3e-2 seed=0,1 train.steps=100 "
    "diagnostics.every=10": (8, {BF16: 2, MXFP8: 2, MXFP4: 2, NVFP4: 2}),
    "precisionlab sweep sweep=paper precision.rounding=nearest_even sweep.name=paper-rne --jobs 2": PAPER,
    "precisionlab sweep precision=bf16,mxfp8,nvfp4 optim.lr=3e-3,3e-2 seed=0,1": (12, {BF16: 4, MXFP8: 4, NVFP4: 4}),
    "precisionlab sweep sweep=fp4 --jobs 2": (42, {BF16: 6, MXFP8: 6, MXFP4: 12, NVFP4: 18}),
    "precisionlab sweep sweep=fp8_recipes --jobs 2": (192, {BF16: 24, FP8: 96, DEEPSEEK: 72}),
    "precisionlab sweep sweep=master_weights --jobs 2 train.threads=1": (18, {BF16: 18}),
    "precisionlab sweep sweep=master_weights --jobs 1 train.threads=1": (18, {BF16: 18}),
    "precisionlab sweep sweep=wortsman_qk --jobs 1 train.threads=1": (18, {mask("fp32"): 18}),
    "precisionlab sweep sweep=wortsman_zloss --jobs 1 train.threads=1": (8, {mask("fp32"): 8}),
    "precisionlab sweep sweep=fp4_signs --jobs 1 train.threads=1":
        (18, {BF16: 3, mask("e2m1fn"): 3, MXFP4: 6, NVFP4: 6}),
    "precisionlab sweep precision.format=e8m3 model.qk_norm=false,true optim.lr=3e-2,3e-1 seed=0,1,2,3":
        (16, {mask("e8m3"): 16}),
    "precisionlab sweep model=hf_small model.hf.arch=gpt2,llama precision=fp32,bf16 optim.lr=3e-3 seed=0,1":
        (8, {mask("fp32"): 4, BF16: 4}),
    'precisionlab sweep "train.loggers=[tensorboard,mlflow,wandb]"': DEFAULT,
    'precisionlab sweep model=hf precision=fp32,mxfp8 seed=0,1 "train.loggers=[tensorboard,mlflow,wandb]" '
    'sweep.name=hf_llama': (4, {mask("fp32"): 2, MXFP8: 2}),
}
PLACEHOLDERS = re.compile(r"\b(RUN_ID|DIR|N)\b|\[--")  # a synopsis, or a command to fill in


def readme_sweep_commands(text: str) -> list[str]:
    """Every `precisionlab sweep` command in the README: code-block lines (continuations joined,
    comments and a `$ ` prompt dropped, `&&` chains split) and inline code spans."""
    commands, in_block, lines, i = [], False, text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("```"):
            in_block = not in_block
        elif in_block:
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i].strip()
            for part in line.split("&&"):
                part = part.strip().removeprefix("$ ").strip()
                if part.startswith("precisionlab sweep"):
                    commands.append(" ".join(part.split(" #")[0].split()))
        else:
            commands += [" ".join(span.split()) for span in re.findall(r"`(precisionlab sweep[^`]*)`", line)]
        i += 1
    return list(dict.fromkeys(commands))


def _runnable(command: str) -> list[str]:
    """The command's arguments for a dry run here: a server store becomes the local default, and a
    cluster launcher whose plugin is not installed is left out (a launcher never changes the grid)."""
    args = [a for a in shlex.split(command)[2:] if not a.startswith("store.url=postgresql")]
    if missing_plugin(args):
        args = [a for a in args if not a.lstrip("+").startswith(("hydra/launcher=", "hydra.launcher."))]
    return args


@pytest.mark.slow
def test_every_documented_sweep_command_runs_what_it_says(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = "\n".join(path.read_text() for path in USER_DOCS)
    commands = [c for c in readme_sweep_commands(text) if not PLACEHOLDERS.search(c)]
    assert len(commands) >= 15 and "precisionlab sweep" in commands
    missing = [c for c in commands if c not in EXPECTED]
    assert missing == [], f"sweep commands in the README or docs/ without an expected grid here: {missing}"
    for command in commands:
        result = CliRunner().invoke(app, ["sweep", "--dry-run", *_runnable(command)])
        assert result.exit_code == 0, (command, result.output)
        runs = _listing(result.stdout)
        count, casts = EXPECTED[command]
        assert len(runs) == count, command
        assert Counter(zip(runs.x, runs.w, runs.grad)) == Counter(casts), command
        # warned on purpose: a swept key inside a chosen preset (fp8's formats, an HF preset's architecture)
        assert "warning:" not in result.stderr or "precision=fp8" in command or "model.hf.arch=" in command, (
            command, result.stderr)
    assert list(tmp_path.iterdir()) == []
