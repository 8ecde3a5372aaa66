"""A sweep's runs read from the results store into the frames a report is built from.

`sweep_runs` gives the labelled runs (`labels.label_runs`: variant, format, ℓ₀, capped losses) of
one sweep that the `--where` filters keep (`analysis.where`), after checking that runs of one data
config trained on one corpus (`store.corpus`); the other readers give what the report draws beside
them: the sweep's row, sharpness values and the parents' curves of branched runs.

Branches: a run started from another run's checkpoint (init.parent) has metrics from its branch
step on, and carries its parent's min val loss, spike count and divergence rule's window up to that
step: its outcome is that of the whole curve. Its parent's train loss up to the branch step is drawn
faintly behind it (`parent_curves`).
"""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from precisionlab.analysis.labels import label_runs
from precisionlab.analysis.where import WhereError, filter_runs
from precisionlab.store import ResultsStore, StoreError
from precisionlab.store.corpus import check_one_corpus

__all__ = ["ReportError", "one_corpus", "sweep_runs", "sweep_info", "sharpness", "parent_curves"]


class ReportError(ValueError):
    """Bad report input; the message is one line naming what is wrong and what is accepted."""


def one_corpus(tables: list[pd.DataFrame], where: str) -> None:
    """ReportError if runs of one data config in `tables` trained on different data (precisionlab.store.corpus)."""
    try:
        check_one_corpus([row for runs in tables for row in zip(runs.run_id, runs.config, runs.meta)], where)
    except StoreError as err:
        raise ReportError(str(err)) from None


def sweep_runs(store: ResultsStore, sweep: str | None, where: Sequence[str] = ()) -> tuple[str, pd.DataFrame, int]:
    """(the name of `sweep`, default the latest; its labelled runs that every `where` keeps; how many
    runs it has in all). ReportError for an unknown sweep, a bad filter or no run left."""
    try:
        name = store.sweep_name(sweep)
    except StoreError as err:
        raise ReportError(str(err)) from None
    runs = label_runs(store.runs(sweep=name))
    one_corpus([runs], f"sweep {name!r}")
    total = len(runs)
    try:
        runs = filter_runs(runs, where)
    except WhereError as err:
        raise ReportError(str(err)) from None
    if runs.empty:
        raise ReportError(f"sweep {name!r} has no runs" + (f" matching --where {' and '.join(where)}" if where else "")
                          + f" ({total} in all)")
    return name, runs, total


def sweep_info(store: ResultsStore, name: str) -> dict[str, Any]:
    """The sweep's row: command, created, grid."""
    sweeps = store.sweeps()
    return sweeps[sweeps.name == name].iloc[0].to_dict()


def sharpness(store: ResultsStore, runs: pd.DataFrame) -> pd.DataFrame:
    """The sharpness values of `runs` joined with their variant, lr, seed and status, each metric's
    parameters as one label ("k=v, ..."); empty when none was measured."""
    sharp = store.sharpness(run_ids=list(runs.run_id))
    if not sharp.empty:
        sharp = sharp.assign(params=[_params_label(p) for p in sharp.params])
        sharp = sharp.merge(runs[["run_id", "variant", "lr", "seed", "status"]], on="run_id")
    return sharp


def _params_label(params: Any) -> str:
    if not isinstance(params, dict) or not params:
        return ""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items()))


def parent_curves(store: ResultsStore, branches: pd.DataFrame) -> pd.DataFrame:
    """Each branch's parent's train loss up to its branch step, under the branch's run_id (the parent
    may be in no sweep of this report; a parent the store lacks draws nothing)."""
    columns = ["run_id", "step", "loss"]
    if branches.empty:
        return pd.DataFrame(columns=columns)
    train = store.metrics(run_ids=sorted(set(branches.parent_run_id)), split="train")
    parts = [train[(train.run_id == b.parent_run_id) & (train.step <= b.branch_step)].assign(run_id=b.run_id)[columns]
             for b in branches.itertuples()]
    return pd.concat(parts, ignore_index=True)
