"""What a sweep says before it runs (precisionlab.sweep.preview): each run's status in the store, the
grid's header (runs, axes, how many the store holds and how many will run) and the --dry-run list."""

from __future__ import annotations

import dataclasses

from helpers import SWEEP_MICRO
from precisionlab.store import ResultsStore
from precisionlab.sweep.plan import plan
from precisionlab.sweep.preview import NEW, header, run_list, statuses


def _grid(tmp_path, *extra):
    return plan(["precision.format=e8m7,e8m3", "seed=0,1", *extra, *SWEEP_MICRO], cwd=tmp_path)


def test_statuses_come_from_the_store_and_new_runs_are_new(tmp_path):
    grid = _grid(tmp_path)
    assert statuses(None, grid) == {rid: NEW for rid in grid.runs} and len(grid.runs) == 4
    store = ResultsStore(tmp_path / "s.db")
    store.add_sweep("other", command="test")
    store.register_runs(grid.configs[:1], sweep="other")
    found = statuses(store, grid)
    assert found[grid.run_ids[0]] == "pending" and [found[r] for r in grid.run_ids[1:]] == [NEW] * 3


def test_header_counts_stored_done_and_to_run(tmp_path):
    grid = _grid(tmp_path)
    status = dict.fromkeys(grid.runs, NEW) | {grid.runs[0]: "completed", grid.runs[1]: "failed"}
    first, *axes = header(grid, status).splitlines()
    assert first == f"sweep {grid.name}: 4 runs (2 x 2 grid points), 2 already in the store (1 done), 3 to run"
    assert len(axes) == 2
    fmt, seed = (next(line for line in axes if line.split()[0] == key) for key in ("precision.format", "seed"))
    assert fmt.split()[1:4] == ["2", "e8m7,", "e8m3"] and seed.split()[1:4] == ["2", "0,", "1"]
    forced = dataclasses.replace(grid, force=True)
    assert header(forced, status).splitlines()[0].endswith("2 already in the store (1 done), 4 to run")


def test_single_values_are_axes_of_one_and_a_grid_without_axes_says_so(tmp_path):
    grid = plan(["sweep=fp4", "precision=bf16", "optim.lr=3e-3", "seed=0", *SWEEP_MICRO], cwd=tmp_path)
    lines = header(grid, statuses(None, grid)).splitlines()
    assert len(grid.runs) == 1 and lines[0].startswith(f"sweep {grid.name}: 1 runs (1 x 1 x 1 grid points)")
    assert {line.split()[0]: line.split()[1] for line in lines[1:]} == {"precision": "1", "optim.lr": "1", "seed": "1"}
    bare = dataclasses.replace(grid, params={}, sources={})
    assert header(bare, statuses(None, bare)).splitlines()[1:] == ["  (no axes: one run)"]


def test_run_list_shows_every_run_once_with_its_formats(tmp_path):
    grid = _grid(tmp_path)
    status = statuses(None, grid)
    head, *rows = run_list(grid, status).splitlines()
    assert head.split()[:4] == ["run", "id", "status", "x"]
    assert sorted(row.split()[0] for row in rows) == sorted(grid.runs)
    for row in rows:
        rid, state, x, w, grad = row.split()[:5]
        cfg = grid.configs[grid.run_ids.index(rid)]
        assert state == NEW and (x, w, grad) == (cfg.precision.x, cfg.precision.w, cfg.precision.grad)
        assert f"seed={cfg.seed}" in row
