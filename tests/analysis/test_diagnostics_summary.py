"""precisionlab.analysis.diagnostics: per-site means, worst sites, per-step series and the per-format
summary, on the known rows of tests/helpers/diagnostics_runs.py (hand-worked values there)."""

from __future__ import annotations

import pandas as pd
import pytest

from helpers.diagnostics_runs import DGRAD_G, FWD_X, HEAD_W, diagnostics_report
from precisionlab.analysis import render
from precisionlab.analysis.diagnostics import by_step, site_means, summary, worst_sites


@pytest.fixture
def report(tmp_path):
    return diagnostics_report(tmp_path)


def test_site_means_worst_sites_and_steps(report):
    d = report.diagnostics
    assert set(d.variant) == {"fp32", "e8m3"} and len(d) == 2 * 2 + 2 * 2 * 15
    means = site_means(d, "e8m3")
    assert list(zip(means.layer, means.operand)) == [("blocks.0.attn.c_attn", "fwd_x"), ("blocks.0.attn.c_attn", "dgrad_g"),
                                                     ("lm_head", "fwd_w")]  # model order, then operand order
    assert list(means.saturated) == [0.375, 0.0, 0.0625] and list(means.flushed) == [0.0, 0.5, 0.0]
    assert worst_sites(d, "e8m3") == ("saturated", [FWD_X, HEAD_W, DGRAD_G])
    assert by_step(d, "e8m3", "saturated", FWD_X).to_dict() == {5: 0.25, 10: 0.5}
    assert by_step(d, "e8m3", "attn_logit_max").to_dict() == {5: 4.0, 10: 5.0}  # max over the layers
    assert site_means(d, "fp32").empty and worst_sites(d, "fp32") == ("saturated", [])


def test_summary_per_format(report):
    table = summary(report.diagnostics, list(report.by_variant.variant)).set_index("variant")
    e8m3 = table.loc["e8m3"]
    assert (e8m3.saturated, e8m3.saturated_site) == (0.375, FWD_X)
    assert (e8m3.flushed, e8m3.flushed_site) == (0.5, DGRAD_G)
    assert (e8m3.cast_error, e8m3.cast_error_site) == (0.25, DGRAD_G)
    assert (e8m3.grad_cosine, e8m3.attn_logit_max, e8m3.log_z, e8m3.update_ratio) == (0.625, 5.0, 6.0, 0.01)
    assert table.loc["fp32"].grad_cosine == 1.0 and pd.isna(table.loc["fp32"].saturated)
    shown = render.diagnostics_display(report)
    assert list(shown.format) == ["fp32", "e8m3"]
    assert shown["most saturated"].tolist() == ["–", f"37.50% ({FWD_X})"]
    assert shown["min grad cosine"].tolist() == ["1.0000", "0.6250"]
