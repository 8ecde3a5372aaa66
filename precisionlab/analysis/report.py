"""`precisionlab report`: a sweep's runs as stability tables, the verdicts and the frontier, in one Report.

`build` assembles the report from its parts, each in a module of its own:
  runs          reading the store: the sweep's labelled runs, filtered (`analysis.where`), and what is
                drawn beside them (analysis.runs)
  estimates     the descriptive tables per variant x LR and per variant, outcomes (analysis.estimates)
  verdicts      the tests against the reference, their Holm family and the verdicts (analysis.verdicts)
  dose          dose-response and the frontier (analysis.dose)
  warning       the early-warning signals of divergence (analysis.warning)
Plots are drawn by `precisionlab.analysis.plots`, tables formatted by `precisionlab.analysis.tables`,
documents written by `precisionlab.analysis.render`; two sweeps side by side: `analysis.compare`.

Definitions (the README's "Reading a report" repeats them):
  variant, ℓ₀, ℓ  what a row compares, the reference loss ln V and the capped final loss:
                precisionlab.analysis.labels.
  outcome, ℓ(η), LR sensitivity, best LR, intervals: precisionlab.analysis.estimates.
  branches      precisionlab.analysis.runs.
  verdict       precisionlab.analysis.verdicts.
Only finished runs (completed or diverged) enter the statistics; failed and
unfinished runs are counted apart and named in the report's notes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from precisionlab.analysis import dose, warning
from precisionlab.analysis.diagnostics import labelled
from precisionlab.analysis.estimates import by_lr, by_variant_estimates, mark_convergence, sharpness_by_step
from precisionlab.analysis.labels import display_label, identical_to
from precisionlab.analysis.runs import ReportError, parent_curves, sharpness, sweep_info, sweep_runs
from precisionlab.analysis.verdicts import ALPHA, detectability, reference_tests, with_loss_tests
from precisionlab.store import DONE, ResultsStore

__all__ = ["Report", "ReportError", "build"]


@dataclass
class Report:
    sweep: str                 # the sweep's name in the store
    store_path: str            # the results store: its absolute path, or its URL without the password
    info: dict[str, Any]       # the sweep's row: command, created, grid
    runs: pd.DataFrame         # one row per run: label_runs() columns + capped loss
    by_lr: pd.DataFrame        # one row per variant x LR (by_lr())
    by_variant: pd.DataFrame   # one row per variant (by_variant())
    curves: pd.DataFrame       # per-step metrics of the runs (run_id, step, split, loss, ...)
    sharpness: pd.DataFrame    # per-run sharpness values joined with variant/lr/seed (may be empty)
    sharpness_steps: pd.DataFrame  # sharpness_by_step(): mean ± std per metric x variant x step
    notes: list[str] = field(default_factory=list)  # caveats to print with the tables
    warning: pd.DataFrame = field(default_factory=pd.DataFrame)  # early_warning(): per signal (may be empty)
    warning_aligned: pd.DataFrame = field(default_factory=pd.DataFrame)  # aligned(): diverged runs' signals
    warning_windows: pd.DataFrame = field(default_factory=pd.DataFrame)  # windows(): AUC per signal x lead
    warning_roc: pd.DataFrame = field(default_factory=pd.DataFrame)  # roc(): ROC vertices per signal x lead
    # per branch (its run_id): the parent's train loss up to the branch step (step, loss), drawn faintly
    parent_curves: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["run_id", "step", "loss"]))
    diagnostics: pd.DataFrame = field(default_factory=pd.DataFrame)  # diagnostics rows + variant/lr/seed (may be empty)
    dose: dose.Dose | None = None  # dose-response, frontiers and the frontier sentence (analysis.dose)

    @property
    def reference(self) -> str | None:
        return None if self.by_variant.empty else str(self.by_variant.variant.iloc[0])

    def headline(self) -> str:
        """One sentence: which variants the tests find less or more stable than the reference, by which
        tests, and what the tests can detect with these seeds (`detectability`)."""
        table = self.by_variant
        if not table.finished.sum():
            return "no finished runs yet"
        if len(table) < 2:
            return f"one variant ({self.reference}): nothing to compare" if len(table) else "no finished runs"
        seeds = int(np.nanmax([table.paired_seeds.max(), table.loss_pairs.max(), 0]))
        text = f"Against {self.reference} (reference; {seeds} paired seed{'s' * (seeds != 1)}, Holm-adjusted α = {ALPHA:g}):"
        for verdict in ("less stable", "more stable", "mixed", "no difference detected", "too few seeds to test"):
            rows = table[table.verdict == verdict]
            if len(rows):
                text += f" {verdict.capitalize()}: " + "; ".join(f"{display_label(r.variant)} ({r.reason})"
                                                                  for r in rows.itertuples()) + "."
        return text + "".join(f" {line}" for line in detectability(table))


def build(store: ResultsStore, sweep: str | None = None, where: Sequence[str] = (),
          margin: float = dose.DEFAULT_MARGIN) -> Report:
    """The report of `sweep` (default: the latest) in `store`, over the runs `where` keeps; `margin`
    is δ of the dose-response frontier (analysis.dose), in nats per byte."""
    try:
        margin = dose.check_margin(margin)
    except ValueError as err:
        raise ReportError(str(err)) from None
    name, runs, total = sweep_runs(store, sweep, where)
    notes = []
    if where:
        notes.append(f"filtered with --where {' and '.join(where)}: {len(runs)} of {total} runs")
    unfinished = runs[~runs.status.isin(DONE)]
    for status, count in unfinished.status.value_counts().items():
        how = {"failed": "their errors: ResultsStore(path).runs(status='failed').error",
               "running": "still running, or interrupted: rerun the sweep command to finish them"}
        notes.append(f"{count} run(s) {status}, not in the statistics ("
                     + how.get(status, "rerun the sweep command to finish them") + ")")
    table = by_lr(runs)
    variants, losses = reference_tests(by_variant_estimates(table, runs), runs)
    table = with_loss_tests(table, losses)
    runs, table, variants = mark_convergence(runs, table, variants)
    reference = str(variants.variant.iloc[0]) if len(variants) else ""
    twins = [v for v in variants.variant.iloc[1:] if identical_to(runs, v, reference)]
    if twins:  # its tests compare the reference with itself: say why it shows no difference
        notes.append(f"{', '.join(twins)} ended bit-identical to {reference} in every run (the same losses at every LR "
                     "and seed): the cast changes no bit at this scale")
    grids = {v: tuple(sorted(g.lr)) for v, g in table[table.finished > 0].groupby("variant")}
    if len(set(grids.values())) > 1:
        notes.append("variants were run over different LR grids: their LR sensitivities are not comparable")
    branches = runs[runs.parent_run_id.notna()] if "parent_run_id" in runs else runs.iloc[:0]
    if len(branches):
        notes.append(f"{len(branches)} run(s) branch from another run's checkpoint (init.parent): their curves start "
                     "after the branch step; spikes and min val loss include the parent's steps up to it")
    ids = list(runs.run_id)
    curves = store.metrics(run_ids=ids)
    sharp = sharpness(store, runs)
    diagnostics = labelled(store.diagnostics(run_ids=ids), runs)
    info = sweep_info(store, name)
    signal_table = warning.signals(curves, sharp, diagnostics)
    warned = {}
    if (runs.status == "diverged").any():  # given the curves, bit-identical runs count once
        warned = {"warning": warning.early_warning(runs, signal_table, curves=curves),
                  "warning_aligned": warning.aligned(runs, signal_table, curves=curves),
                  "warning_windows": warning.windows(runs, signal_table, curves=curves),
                  "warning_roc": warning.roc(runs, signal_table, curves=curves)}
    return Report(sweep=name, store_path=store.location, info=info, runs=runs, by_lr=table, by_variant=variants,
                  curves=curves, sharpness=sharp, sharpness_steps=sharpness_by_step(sharp), notes=notes, **warned,
                  diagnostics=diagnostics, dose=dose.study(runs, variants, margin),
                  parent_curves=parent_curves(store, branches))

