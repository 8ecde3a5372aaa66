"""precisionlab.analysis.signal_plots: what the diagnostics and sharpness figures draw, read back from
the figures and checked against the hand-worked values of tests/helpers/diagnostics_runs.py and
tests/helpers/known_sweep.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from helpers.diagnostics_runs import DGRAD_G, FWD_X, HEAD_W, diagnostics_report
from helpers.known_sweep import SWEEP, known_store
from precisionlab.analysis.report import build
from precisionlab.analysis.signal_plots import diagnostics_sites, diagnostics_trends, sharpness_curves

NAN = math.nan


@pytest.fixture
def report(tmp_path):
    return diagnostics_report(tmp_path)


def test_sites_heatmaps_hold_each_layer_and_operand_mean(report):
    assert diagnostics_sites(report, "fp32") is None  # fp32 casts nothing
    fig = diagnostics_sites(report, "e8m3")
    saturated, flushed, worst = fig.axes[:3]
    # rows: blocks.0.attn.c_attn, lm_head; columns: fwd_x, fwd_w, dgrad_g (grey NaN: no such cast)
    assert [t.get_text() for t in saturated.get_xticklabels()] == ["fwd_x", "fwd_w", "dgrad_g"]
    np.testing.assert_array_equal(saturated.images[0].get_array().filled(NAN), [[0.375, NAN, 0.0], [NAN, 0.0625, NAN]])
    np.testing.assert_array_equal(flushed.images[0].get_array().filled(NAN), [[0.0, NAN, 0.5], [NAN, 0.0, NAN]])
    lines = {line.get_label(): line for line in worst.get_lines()}
    assert list(lines) == [FWD_X, HEAD_W, DGRAD_G]  # worst by saturation first
    assert lines[FWD_X].get_xdata().tolist() == [5, 10] and lines[FWD_X].get_ydata().tolist() == [0.25, 0.5]


def test_trends_draw_each_variants_mean_per_step(report):
    fig = diagnostics_trends(report)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["gradient cosine vs fp32", "max attention logit", "output log Z (mean over tokens)"]  # no grad_error
    cosine = {line.get_label(): line.get_ydata().tolist() for line in fig.axes[0].get_lines()}
    assert cosine == {"fp32": [1.0, 1.0], "e8m3": [0.75, 0.625]}
    logits = {line.get_label(): line.get_ydata().tolist() for line in fig.axes[1].get_lines()}
    assert logits == {"e8m3": [4.0, 5.0]}  # max over the layers, fp32 reports none


def test_a_sweep_without_diagnostics_draws_no_trends(tmp_path):
    assert diagnostics_trends(build(known_store(tmp_path), SWEEP)) is None


def test_sharpness_panels_draw_each_runs_values(tmp_path):
    store = known_store(tmp_path)
    runs = build(store, SWEEP).runs.set_index(["format", "lr", "seed"])
    for step, value in ((10, 1.0), (20, 3.0)):
        store.add_sharpness(runs.loc[("e8m7", 1e-3, 0), "run_id"], step, "logit", value, {"eps": 1e-3})
    report = build(store, SWEEP)
    fig = sharpness_curves(report, "logit", "eps=0.001")
    variants = list(report.by_variant.variant)
    assert len(fig.axes) == 2 * len(variants)
    bottom = fig.axes[len(variants) + variants.index("e8m7")]  # row 2 of the 2 x variants grid
    (line,) = bottom.get_lines()
    assert line.get_xdata().tolist() == [10, 20] and line.get_ydata().tolist() == [1.0, 3.0]
    assert all(not ax.get_lines() for i, ax in enumerate(fig.axes[len(variants):]) if i != variants.index("e8m7"))
