"""Early warning on synthetic runs with planted precursors: lead times and false alarms by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from precisionlab.analysis.warning import aligned, early_warning, signals

# LR 0.1: two completed runs whose grad norm stays in [1, 2]; three diverged runs:
#   c  diverges at 40, grad norm 5 from step 30 on   -> warned 10 steps ahead
#   d  diverges at 30, grad norm 5 from step 25 on   -> warned  5 steps ahead
#   e  diverges at 20, never above 2                 -> not warned
# LR 1.0: one diverged run and no completed run: no threshold, not calibrated.
RUNS = pd.DataFrame({
    "run_id": ["a", "b", "c", "d", "e", "f"],
    "lr": [0.1, 0.1, 0.1, 0.1, 0.1, 1.0],
    "status": ["completed", "completed", "diverged", "diverged", "diverged", "diverged"],
    "diverged_step": [None, None, 40, 30, 20, 15],
})


def _curve(run_id, steps, values):
    return pd.DataFrame({"run_id": run_id, "step": steps, "split": "train", "grad_norm": values, "loss": 1.0})


@pytest.fixture
def table():
    steps = np.arange(1, 51)
    curves = [
        _curve("a", steps, 1 + (steps % 2)),                      # 1, 2, 1, 2, ...: max 2
        _curve("b", steps, np.where(steps == 7, 2.0, 1.5)),       # max 2 (a tie: no false alarm either way)
        _curve("c", steps[:40], np.where(steps[:40] >= 30, 5.0, 1.5)),
        _curve("d", steps[:30], np.where(steps[:30] >= 25, 5.0, 1.5)),
        _curve("e", steps[:20], np.full(20, 1.9)),
        _curve("f", steps[:15], np.full(15, 9.0)),
    ]
    return signals(pd.concat(curves, ignore_index=True))


def test_lead_times_and_warned_fraction_are_recovered_exactly(table):
    (row,) = early_warning(RUNS, table, lead=10).itertuples()
    assert row.signal == "grad_norm" and (row.diverged, row.calibrated) == (4, 3)  # f has no threshold
    assert row.warned == 1 and row.median_lead == 7.5  # c (10) counts at lead >= 10, d (5) does not
    assert (row.completed, row.false_alarms) == (2, 0)
    assert early_warning(RUNS, table, lead=5).warned.iloc[0] == 2
    assert early_warning(RUNS, table, lead=11).warned.iloc[0] == 0


def test_a_completed_run_above_the_others_is_a_false_alarm(table):
    raised = table.copy()
    raised.loc[(raised.run_id == "b") & (raised.step == 7), "value"] = 3.0  # b now exceeds a's max of 2
    (row,) = early_warning(RUNS, raised).itertuples()
    assert (row.completed, row.false_alarms) == (2, 1)
    # Clopper-Pearson for 1 of 2: Beta(0.025; 1, 2) = 1 - sqrt(0.975), Beta(0.975; 2, 1) = sqrt(0.975)
    assert (row.false_alarm_low, row.false_alarm_high) == pytest.approx((1 - math.sqrt(0.975), math.sqrt(0.975)))


def test_a_signal_whose_drop_warns():
    rows = []
    for run_id, stop, drop_from in (("a", None, None), ("b", None, None), ("c", 40, 28)):
        for step in range(1, (stop or 51)):
            value = 0.6 if drop_from and step >= drop_from else 0.95 + 0.01 * (step % 3)  # cosine falls
            rows.append({"run_id": run_id, "step": step, "site": "model", "name": "grad_cosine", "value": value})
    table = signals(pd.DataFrame(columns=["run_id", "step", "split", "grad_norm"]), diagnostics=pd.DataFrame(rows))
    row = early_warning(RUNS[RUNS.run_id.isin(["a", "b", "c"])], table).iloc[0]
    assert row.signal == "grad_cosine" and row.warned == 1 and row.median_lead == 12


def test_aligned_puts_divergence_at_zero(table):
    out = aligned(RUNS, table)
    c = out[out.run_id == "c"].sort_values("steps_before")
    assert list(c.steps_before) == list(range(-39, 0))  # steps 1..39 before divergence at 40
    assert list(c.ratio[c.steps_before >= -10]) == [2.5] * 10 and set(c.ratio[c.steps_before < -10]) == {0.75}
    assert "f" not in set(out.run_id)  # no completed run at its LR: no threshold to compare with
