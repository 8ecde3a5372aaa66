"""Report tables as text (precisionlab.analysis.tables): fixed-width alignment, and the by-LR table's
cells on a hand-made table (counts as k/n, a missing step as a dash, mean ± std, the interval column,
optional columns only where they say something)."""

from __future__ import annotations

import math

import pandas as pd

from precisionlab.analysis.stats import CI, RANGE
from precisionlab.analysis.tables import display_by_lr, text_table


def test_text_table_left_aligns_the_first_column_and_right_aligns_the_others():
    df = pd.DataFrame({"name": ["a", "long name"], "n": [1, 200], "x": ["0.5", "1"]})
    assert text_table(df).splitlines() == [
        "name         n    x",
        "a            1  0.5",
        "long name  200    1",
    ]


def _by_lr(**changes) -> pd.DataFrame:
    table = pd.DataFrame({
        "variant": ["e8m3", "e8m7"], "lr": [0.003, 0.01], "diverged": [2, 0], "finished": [3, 3],
        "median_diverged_step": [41.0, math.nan], "final_loss_mean": [math.nan, 2.25], "final_loss_std": [math.nan, 0.125],
        "final_loss_low": [math.nan, 2.0], "final_loss_high": [math.nan, 2.5], "final_loss_interval": ["", CI],
        "spikes": [1, 0], "failed": [0, 0],
    })
    for key, value in changes.items():
        table[key] = value
    return table


def test_by_lr_cells():
    shown = display_by_lr(_by_lr())
    assert list(shown.columns) == ["format", "lr", "diverged", "median div. step", "final val loss", "95% CI or range", "spikes"]
    assert shown.iloc[0].tolist() == ["e8m3", "0.003", "2/3", "41", "–", "–", "1"]
    assert shown.iloc[1].tolist() == ["e8m7", "0.01", "0/3", "–", "2.2500 ± 0.1250", "[2.0000, 2.5000]", "0"]


def test_by_lr_ranges_and_the_columns_that_appear_when_they_say_something():
    shown = display_by_lr(_by_lr(final_loss_interval=[RANGE, RANGE], final_loss_low=[1.0, 2.0], final_loss_high=[1.5, 2.0],
                                 failed=[0, 1], not_converged=[1, 0]))
    assert shown["95% CI or range"].tolist() == ["range 1.0000 to 1.5000", "all seeds equal"]
    assert shown["failed"].tolist() == ["0", "1"] and shown["not conv."].tolist() == ["1/3", "0/3"]
    assert list(shown.columns).index("not conv.") == list(shown.columns).index("median div. step") + 1
