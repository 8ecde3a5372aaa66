"""What a sweep says before it runs: its grid (each axis with its values and where it comes
from, the number of runs, how many the store already has) and, for `--dry-run`, every run
(its id, its status in the store, what it casts, its label in reports, its grid point).

Labels are the report's (`precisionlab.analysis.labels.label_runs` over the planned runs), so a
preset that an override changes shows as `PRESET+key=value` here too.
"""

from __future__ import annotations

import math

import pandas as pd

from precisionlab.store import DONE, ResultsStore
from precisionlab.store.identity import canonical
from precisionlab.sweep.plan import Grid

__all__ = ["statuses", "header", "run_list"]

NEW = "new"  # a run the store does not have yet


def statuses(store: ResultsStore | None, grid: Grid) -> dict[str, str]:
    """Each run's status in `store` (`new` where it has none, or where there is no store)."""
    found = {}
    if store is not None:
        runs = store.runs()
        found = dict(zip(runs.run_id, runs.status))
    return {rid: found.get(rid, NEW) for rid in grid.runs}


def _values(grid: Grid, key: str) -> list[str]:
    """An axis's values, in grid order, as the grid points spell them."""
    prefix = f"{key}="
    return list(dict.fromkeys(o[len(prefix):] for point in grid.points for o in point if o.startswith(prefix)))


def header(grid: Grid, status: dict[str, str]) -> str:
    """The grid: one line of counts, then one line per axis (values, how many, where from)."""
    counts = pd.Series(list(status.values()), dtype=object).value_counts()
    done = int(sum(counts.get(s, 0) for s in DONE))
    stored = len(status) - int(counts.get(NEW, 0))
    to_run = len(status) if grid.force else len(status) - done
    shape = " x ".join(str(len(_values(grid, k))) for k in grid.params) or "1"
    lines = [f"sweep {grid.name}: {len(grid.runs)} runs ({shape} grid points"
             + (f", {len(grid.run_ids)} in all" if len(grid.run_ids) != len(grid.runs) else "")
             + f"), {stored} already in the store ({done} done), {to_run} to run"]
    if grid.params:
        values = {key: ", ".join(_values(grid, key)) for key in grid.params}
        width, room = max(map(len, values)), max(map(len, values.values()))
        for key, text in values.items():
            count = len(_values(grid, key))
            lines.append(f"  {key:<{width}}  {count:>3}  {text:<{room}}  ({grid.sources[key]})")
    else:
        lines.append("  (no axes: one run)")
    return "\n".join(lines)


def run_list(grid: Grid, status: dict[str, str]) -> str:
    """Every run of the grid: id, status in the store, x/w/grad formats, label, grid point."""
    from precisionlab.analysis.labels import display_label, label_runs

    first = {}
    for rid, cfg, point in zip(grid.run_ids, grid.configs, grid.points):
        first.setdefault(rid, (cfg, point))
    rows = []
    for rid, (cfg, point) in first.items():
        rows.append({"run_id": rid, "config": canonical(cfg, semantic=False), "format_x": cfg.precision.x,
                     "format_w": cfg.precision.w, "format_grad": cfg.precision.grad, "status": status[rid],
                     "initial_loss": math.nan, "final_val_loss": math.nan,
                     "point": " ".join(o for o in point if o.split("=", 1)[0] in grid.params)})
    runs = label_runs(pd.DataFrame(rows))
    table = pd.DataFrame({"run id": runs.run_id, "status": runs.status, "x": runs.format_x, "w": runs.format_w,
                          "grad": runs.format_grad, "label": runs.variant.map(display_label), "grid point": runs.point})
    widths = {c: max(len(c), *(len(str(v)) for v in table[c])) for c in table.columns}
    lines = ["  ".join(f"{c:<{widths[c]}}" for c in table.columns).rstrip()]
    lines += ["  ".join(f"{str(v):<{widths[c]}}" for c, v in zip(table.columns, row)).rstrip()
              for row in table.itertuples(index=False)]
    return "\n".join(lines)
