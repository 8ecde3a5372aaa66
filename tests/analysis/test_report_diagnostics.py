"""The report's numerical diagnostics section in the written files, on the known rows of
tests/helpers/diagnostics_runs.py; the section's numbers are tested in test_diagnostics_summary.py."""

from __future__ import annotations

import base64
import io

import pandas as pd
import pytest

from helpers.diagnostics_runs import FWD_X, diagnostics_report
from precisionlab.analysis import render
from precisionlab.analysis.report import build
from precisionlab.store import ResultsStore, run_id


@pytest.fixture
def report(tmp_path):
    return diagnostics_report(tmp_path)


def test_report_files_show_the_section(report, tmp_path):
    written = {p.name: p for p in render.write(report, tmp_path / "out")}
    assert {"diagnostics.csv", "diagnostics_trends.png", "diagnostics_sites_2.png"} <= set(written)
    assert "diagnostics_sites_1.png" not in written  # fp32 casts nothing
    html = written["report.html"].read_text()
    section = html[html.index("<h2>Numerical diagnostics</h2>"):html.index("<h2>Definitions</h2>")]
    assert FWD_X in section and "0.6250" in section
    for name in ("diagnostics_trends.png", "diagnostics_sites_2.png"):  # embedded, byte for byte
        encoded = base64.b64encode(written[name].read_bytes()).decode("ascii")
        assert f'alt="{name}" src="data:image/png;base64,{encoded}"' in section
    assert "## Numerical diagnostics" in written["report.md"].read_text()
    sites = pd.read_csv(io.StringIO(written["diagnostics.csv"].read_text()))
    assert sites.columns.tolist() == ["format", "layer", "operand", "saturated", "flushed", "cast_error"]
    assert sites.saturated.tolist() == [0.375, 0.0, 0.0625] and set(sites.format) == {"e8m3"}


def test_a_sweep_without_diagnostics_has_no_section(tmp_path):
    store = ResultsStore(tmp_path / "store.db")
    cfg = {"model": {"n_layer": 2}, "precision": {"name": "fp32", "format": "fp32"}, "optim": {"lr": 1e-3}, "seed": 0}
    assert store.claim_run(run_id(cfg), cfg, "plain")
    with store.recorder(run_id(cfg)) as rec:
        rec.log(1, "train", {"loss": 5.0})
        rec.finish({"status": "completed"})
    report = build(store, "plain")
    names = [p.name for p in render.write(report, tmp_path / "out")]
    assert render.diagnostics_display(report) is None and not any(n.startswith("diagnostics") for n in names)
    assert "Numerical diagnostics" not in (tmp_path / "out" / "report.html").read_text()
