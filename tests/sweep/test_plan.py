"""Planning a sweep (precisionlab.sweep.plan): the grid as the cartesian product of its axes, the grid
configs and the command line that replaces their keys, and the sweep's name; planning writes nothing."""

from __future__ import annotations

import itertools

import pytest

from helpers import SWEEP_MICRO
from precisionlab.sweep.plan import plan


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
