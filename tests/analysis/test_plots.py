"""The report's figures (precisionlab.analysis.plots): which figures a report gets by what its runs
hold (none before any step, loss curves only while nothing finished), each a PNG."""

from __future__ import annotations

import matplotlib.pyplot as plt

from helpers.store import make_config, record, store_with_pending_runs
from precisionlab.analysis import plots
from precisionlab.analysis.report import build
from precisionlab.store import ResultsStore, run_id

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _names(report) -> set[str]:
    figures = plots.figures(report)
    try:
        for fig in figures.values():
            assert plots.png(fig).startswith(PNG_MAGIC)
        return set(figures)
    finally:
        for fig in figures.values():
            plt.close(fig)


def test_no_figures_before_any_step_and_curves_only_while_nothing_finished(tmp_path):
    store = store_with_pending_runs(tmp_path / "pending.db")
    assert _names(build(store)) == set()
    running = ResultsStore(tmp_path / "running.db")
    running.add_sweep("r", command="test")
    config = make_config(seed=0)
    assert running.claim_run(run_id(config), config, "r")
    with running.recorder(run_id(config)) as rec:  # a run still training: steps logged, no outcome yet
        rec.start({"device": "cpu"})
        for step in range(1, 6):
            rec.log(step, "train", {"loss": 10 - step / 10, "lr": 1e-3})
        rec.flush()
        assert _names(build(running)) == {"loss_curves.png"}
        rec.finish({"status": "completed"})


def test_finished_runs_get_the_heatmap_and_loss_vs_lr(tmp_path):
    store = ResultsStore(tmp_path / "s.db")
    store.add_sweep("s", command="test")
    for lr in (1e-3, 3e-3):
        for seed in (0, 1):
            record(store, make_config(lr=lr, seed=seed), sweep="s")
    names = _names(build(store))
    assert {"loss_curves.png", "final_loss_heatmap.png", "loss_vs_lr.png"} <= names
    assert not any(name.startswith(("sharpness_", "diagnostics_", "early_warning")) for name in names)
