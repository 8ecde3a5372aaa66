"""Early warning on synthetic runs with planted precursors: time-matched thresholds, lead times,
false alarms (never capped), leave-one-seed-out and bit-identical runs, worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from helpers.warning_runs import synthetic
from precisionlab.analysis.warning import aligned, distinct, early_warning, signals

# LR 0.1: two completed runs; three diverged runs (every run its own seed):
#   a  completed, grad norm 2, 1, 2, 1, ...: its running max is 2 from step 1
#   b  completed, 1.5 but 2.0 at step 7: running max 1.5 up to step 6, then 2
#   c  diverges at 40, grad norm 5 from step 30 on   -> warned 10 steps ahead
#   d  diverges at 30, grad norm 5 from step 25 on   -> warned  5 steps ahead
#   e  diverges at 20, never above 1.9               -> not warned
# LR 1.0: one diverged run and no completed run: no threshold, not calibrated.
RUNS = pd.DataFrame({
    "run_id": ["a", "b", "c", "d", "e", "f"],
    "seed": [0, 1, 2, 3, 4, 5],
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
        _curve("a", steps, 1 + (steps % 2)),
        _curve("b", steps, np.where(steps == 7, 2.0, 1.5)),
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
    assert early_warning(RUNS, table, lead=5).warned.iloc[0] == 2
    assert early_warning(RUNS, table, lead=11).warned.iloc[0] == 0


def test_a_completed_run_ahead_of_the_others_at_the_same_step_is_a_false_alarm(table):
    # a reaches 2 at step 1, when b has reached only 1.5: a crossed b's time-matched threshold;
    # b never exceeds a's running max of 2. (Comparing whole-run maxima, 2 against 2, saw none.)
    (row,) = early_warning(RUNS, table).itertuples()
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


def test_aligned_divides_by_the_threshold_at_the_same_step(table):
    out = aligned(RUNS, table)
    c = out[out.run_id == "c"].sort_values("steps_before")
    assert list(c.steps_before) == list(range(-39, 0))  # steps 1..39 before divergence at 40
    # the threshold (a's running max, b being c's other reference) is 2 from step 1
    assert list(c.ratio[c.steps_before >= -10]) == [2.5] * 10 and set(c.ratio[c.steps_before < -10]) == {0.75}
    assert "f" not in set(out.run_id)  # no completed run at its LR: no threshold to compare with


def rising(factor):
    return lambda step: factor * step


def test_a_rising_signal_three_times_higher_at_the_same_step_warns():
    """Every signal grows during training: compared with the completed runs' maximum over 300
    steps, diverged runs stopped near step 20 never reach it; at the same step they are 3x higher."""
    specs = [{"run_id": f"c{s}", "seed": s, "signal": rising(1.0)} for s in range(6)]
    specs += [{"run_id": f"d{s}", "seed": s, "diverged_step": 20 + s, "signal": rising(3.0)} for s in range(6, 10)]
    runs, curves = synthetic(specs)
    (row,) = early_warning(runs, signals(curves), lead=10).itertuples()
    assert (row.diverged, row.calibrated, row.warned) == (4, 4, 4)
    assert row.median_lead == 26.5  # crossed at step 1, diverged at 26-29: leads 25-28
    assert (row.completed, row.false_alarms) == (6, 0)  # tied with each other at every step
    assert row.auc == 1.0


def test_false_alarms_are_not_capped_at_one_per_lr():
    """Each completed run spikes once, higher than every earlier spike: each crosses the others'
    threshold at its spike, so all five are false alarms at one LR."""
    def spike(at, height):
        return lambda step: np.where(step == at, height, 1.0)
    specs = [{"run_id": f"c{s}", "seed": s, "signal": spike(10 * (s + 1), 10.0 + s)} for s in range(5)]
    specs.append({"run_id": "d", "seed": 9, "diverged_step": 25, "signal": rising(0.0)})
    runs, curves = synthetic(specs)
    (row,) = early_warning(runs, signals(curves)).itertuples()
    assert (row.completed, row.false_alarms) == (5, 5)


def test_the_judged_runs_whole_seed_is_left_out():
    """Seed 0 has large gradients in both formats; its E8M6 run diverges, its E8M7 run completes.
    Judged against the other seeds only, the diverged run is warned; a threshold that kept its own
    seed's other format would sit at its level. The E8M7 run of seed 0 is a false alarm."""
    specs = []
    for seed in range(4):
        level = 5.0 if seed == 0 else 1.0
        specs.append({"run_id": f"e8m7-{seed}", "seed": seed, "signal": lambda step, v=level: np.full(len(step), v)})
        specs.append({"run_id": f"e8m6-{seed}", "seed": seed, "diverged_step": 30 if seed == 0 else None,
                      "signal": lambda step, v=level: np.full(len(step), v)})
    runs, curves = synthetic(specs)
    (row,) = early_warning(runs, signals(curves)).itertuples()
    assert (row.diverged, row.calibrated, row.warned, row.median_lead) == (1, 1, 1, 29)
    assert (row.completed, row.false_alarms) == (7, 1)
    assert row.auc == 1.0 and row.auc_completed == 6  # the 6 completed runs of seeds 1-3


def test_bit_identical_runs_count_once():
    """E7M7 repeats E8M7 bit for bit (same seed, LR, loss sequence): a diverged pair is one
    divergence and a completed pair one completed run, in every count."""
    specs = []
    for seed in range(4):
        diverged = 22 if seed < 2 else None
        same_loss = lambda step, s=seed: 5.0 - step / 100 + s / 10  # noqa: E731
        for fmt in ("e8m7", "e7m7"):
            specs.append({"run_id": f"{fmt}-{seed}", "seed": seed, "diverged_step": diverged, "loss": same_loss,
                          "signal": lambda step, d=diverged: (3.0 if d else 1.0) * step})
        specs.append({"run_id": f"e8m6-{seed}", "seed": seed, "signal": rising(1.0)})
    runs, curves = synthetic(specs)
    kept = distinct(runs, curves)
    assert sorted(kept.run_id) == ["e7m7-0", "e7m7-1", "e7m7-2", "e7m7-3", "e8m6-0", "e8m6-1", "e8m6-2", "e8m6-3"]
    (row,) = early_warning(runs, signals(curves), curves=curves).itertuples()
    assert (row.diverged, row.warned, row.completed) == (2, 2, 6)
    # seed 0's references are e7m7-2, e7m7-3, e8m6-1..3; seed 1's add e8m6-0: 6 distinct runs
    assert (row.auc_diverged, row.auc_completed) == (2, 6)


def test_runs_one_ulp_apart_are_not_twins():
    loss = 5.0 - np.arange(1, 11) / 100
    specs = [{"run_id": "a", "seed": 0, "signal": rising(1.0), "loss": lambda step: loss},
             {"run_id": "b", "seed": 0, "signal": rising(1.0), "loss": lambda step: np.nextafter(loss, 9.0)}]
    runs, curves = synthetic(specs, steps=10)
    assert sorted(distinct(runs, curves).run_id) == ["a", "b"]
