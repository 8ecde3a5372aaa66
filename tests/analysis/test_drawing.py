"""precisionlab.analysis.drawing: the helpers every report figure shares (PNG bytes, one colour per
learning rate and its legend, the loss axis' limits)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest
from matplotlib.figure import Figure

from precisionlab.analysis.drawing import loss_limits, lr_colours, lr_legend, png


def _luminance(rgba) -> float:
    r, g, b = rgba[:3]
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def test_png_is_a_png_file():
    fig = Figure(figsize=(1, 1))
    fig.subplots().plot([0, 1], [0, 1])
    data = png(fig)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 100


def test_one_colour_per_lr_small_lrs_dark():
    colours = lr_colours([1e-2, 1e-3, math.nan, 1e-3, 3e-2])
    assert list(colours) == [1e-3, 1e-2, 3e-2]  # sorted, NaN and duplicates dropped
    brightness = [_luminance(c) for c in colours.values()]
    assert brightness == sorted(brightness) and len(set(brightness)) == 3  # viridis brightens with rank
    assert len(lr_colours([5e-3])) == 1 and lr_colours([]) == {}


def test_legend_names_each_lr_and_the_markers_asked_for():
    fig = Figure()
    lr_legend(fig, lr_colours([1e-3, 1e-2]), diverged=True, branches=True)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["lr 0.001", "lr 0.01", "diverged", "branch point (parent faint)"]
    fig = Figure()
    lr_legend(fig, lr_colours([1e-3]), diverged=False)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["lr 0.001"]


def test_loss_limits_run_from_the_lowest_loss_to_the_highest_start():
    # lowest finite loss 2.0, highest start max(5.0, 4.0, 4.5) = 5.0: pad = 0.05 x 3.0 = 0.15,
    # limits (2.0 - 0.15, 5.0 + 0.3); the infinite loss of a divergence is left out
    report = SimpleNamespace(runs=pd.DataFrame({"initial_loss": [5.0, math.nan], "loss0": [4.0, 4.5]}))
    curves = pd.DataFrame({"loss": [3.0, 2.0, math.inf]})
    assert loss_limits(report, curves) == pytest.approx((1.85, 5.3))
