"""Dose-response and frontier (precisionlab.analysis.dose) on runs whose answer is known.

Axes are checked against bit counts written out by hand (1 sign + E + M bits; a block format's
scale shared by its block). Frontiers are checked on synthetic runs frames built so that every
decision is far from its boundary; the worked numbers are in each test's comments (the interval of
a paired difference is mean ± t_{0.99, n-1} s / √n: stats.paired_margin). The margin decision's
error rates are checked by simulation against scipy's noncentral t distribution, which gives the
probability that the upper bound of that interval falls below δ for normal seed-to-seed noise.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from precisionlab.analysis import dose
from precisionlab.analysis.report import build
from precisionlab.analysis.render import write
from precisionlab.cli import app
from precisionlab.store import ResultsStore, run_id

DELTA = 0.02
LR = 3e-3


# --------------------------------------------------------------------------- axes


def test_axes_of_the_default_grid():
    grid = ["e8m7", "e8m3", "e8m2", "e8m1", "e8m0", "e6m7", "e5m7", "e4m7"]
    found = {name: (kind, widths) for name, kind, widths in dose.axes(grid)}
    assert found["mantissa bits at E8"] == ("mantissa", {"e8m7": 7, "e8m3": 3, "e8m2": 2, "e8m1": 1, "e8m0": 0})
    assert found["exponent bits at M7"] == ("exponent", {"e8m7": 8, "e6m7": 6, "e5m7": 5, "e4m7": 4})
    # 1 + E + M bits: e8m7 16, e6m7 14, e5m7 13, e8m3 and e4m7 12, e8m2 11, e8m1 10, e8m0 9
    assert found["bits per element"] == ("bits", {"e8m7": 16, "e6m7": 14, "e5m7": 13, "e8m3": 12, "e4m7": 12,
                                                  "e8m2": 11, "e8m1": 10, "e8m0": 9})
    assert len(found) == 3  # e.g. no "mantissa bits at E6": one width is no axis


def test_axes_of_recipes_and_labels():
    # one exponent width only: the bits axis would repeat the mantissa axis, so it is left out
    assert [name for name, _, _ in dose.axes(["e8m7", "e8m3"])] == ["mantissa bits at E8"]
    # block formats count their shared scales: mxfp4 4 + 8/32, nvfp4 4 + 8/16 (the tensor scale is per tensor)
    (name, kind, widths), = dose.axes(["fp32", "mxfp4", "nvfp4"])
    assert (name, kind) == ("bits per element", "bits") and widths == {"fp32": 32, "mxfp4": 4.25, "nvfp4": 4.5}
    # x/w/grad formats that differ sit on the bits axis only, at their mean bits
    assert dose.axes(["e8m7", "e8m7/e8m3/e8m7"]) == [("bits per element", "bits", {"e8m7": 16, "e8m7/e8m3/e8m7": 44 / 3})]
    # a setting that differs gives axes of its own; the bits axis spans both
    labels = ["e8m7 [rounding=nearest]", "e8m3 [rounding=nearest]", "e8m7 [rounding=stochastic]",
              "e8m3 [rounding=stochastic]"]
    names = [name for name, _, _ in dose.axes(labels)]
    assert names == ["mantissa bits at E8 [rounding=nearest]", "mantissa bits at E8 [rounding=stochastic]",
                     "bits per element"]
    assert dose.axes(["e8m7"]) == [] and dose.axes(["not a format", "e8m7"]) == []
    assert dose.axes(["bf16", "e8m7", "e8m3"])[0][2] == {"bf16": 7, "e8m3": 3}  # one format, two names: once


# --------------------------------------------------------------------------- frontiers on known runs


BASE = np.array([2.00, 2.10, 2.05, 1.95])  # the reference's final loss per seed; seed effects cancel in Δ


def _runs(widths: dict, lr: float = LR) -> pd.DataFrame:
    """A labelled-runs frame: {variant: per-seed Δ from BASE, or 'div' for a diverged seed}; e8m7 is BASE."""
    rows = []
    for variant, deltas in {"e8m7": [0.0] * len(BASE), **widths}.items():
        for seed, d in enumerate(deltas):
            diverged = d == "div"
            rows.append({"variant": variant, "lr": lr, "seed": seed, "status": "diverged" if diverged else "completed",
                         "final_val_loss": math.nan if diverged else BASE[seed] + d})
    return pd.DataFrame(rows)


def _frontier(runs: pd.DataFrame, margin: float = DELTA):
    pts = dose.points(runs, "e8m7", margin)
    table = dose.frontiers(pts)
    return pts, table


def _row(table, axis="mantissa bits at E8", lr=LR):
    return table[(table.axis == axis) & (table.lr == lr)].iloc[0]


def test_monotone_frontier_and_first_significant_width():
    runs = _runs({
        "e8m3": [-0.002, 0.002, 0.000, 0.000],   # mean 0, s 0.0016: [-0.004, +0.004]: within, not worse
        "e8m2": [0.004, 0.006, 0.004, 0.006],    # mean 0.005, s 0.00115: [+0.002, +0.008]: within and worse
        "e8m1": [0.09, 0.11, 0.10, 0.10],        # mean 0.1, s 0.0082: [+0.081, +0.119]: beyond
        "e8m0": [0.50, 0.70, 0.60, 0.60],        # beyond
    })
    pts, table = _frontier(runs)
    decisions = dict(zip(pts.variant, pts.decision))
    assert decisions == {"e8m7": "reference", "e8m3": "within", "e8m2": "within", "e8m1": "beyond", "e8m0": "beyond"}
    half = stats.t.ppf(0.99, 3) * np.std([0.004, 0.006, 0.004, 0.006], ddof=1) / 2
    e8m2 = pts.set_index("variant").loc["e8m2"]
    assert (e8m2.delta_low, e8m2.delta_high) == pytest.approx((0.005 - half, 0.005 + half))
    f = _row(table)
    assert (f.frontier, f.frontier_x, f.stop, f.stop_decision, f.first_worse) == ("e8m2", 2, "e8m1", "beyond", "e8m2")
    text = dose.sentence(pts, table, "e8m7", LR, DELTA)
    assert text.startswith(f"Mantissa bits at E8: training matches e8m7 down to e8m2 at LR 0.003 "
                           f"(Δ +0.005 [{0.005 - half:+.3f}, {0.005 + half:+.3f}], margin 0.02); e8m1 costs +0.100 [")
    assert "e8m2 is already worse, by less than the margin" in text


def test_non_monotone_widths_are_named_not_counted():
    runs = _runs({
        "e8m3": [0.000, 0.002, 0.001, 0.001],    # within
        "e8m2": [-0.05, 0.09, 0.02, 0.00],       # mean 0.015, s 0.058: the interval spans ±0.1: undecided
        "e8m1": [0.001, 0.000, 0.002, 0.001],    # within, but past an undecided width
    })
    pts, table = _frontier(runs)
    f = _row(table)
    assert (f.frontier, f.stop, f.stop_decision, f.not_counted, f.first_worse) == ("e8m3", "e8m2", "undecided", "e8m1", "")
    text = dose.sentence(pts, table, "e8m7", LR, DELTA)
    assert "down to e8m3 at LR 0.003" in text and "undecided at e8m2: the interval [" in text
    assert "crosses the margin" in text and "e8m1 within the margin past a width that is not: not counted" in text


def test_two_seeds_are_undecided_and_say_why():
    runs = _runs({"e8m3": [0.0, 0.001]}).query("seed < 2")  # two pairs: a range, never a confidence interval
    pts, table = _frontier(runs)
    assert pts.set_index("variant").loc["e8m3", "decision"] == "undecided"
    f = _row(table)
    assert (f.frontier, f.stop) == ("e8m7", "e8m3")
    text = dose.sentence(pts, table, "e8m7", LR, DELTA)
    assert "no narrower width matches e8m7" in text
    assert "undecided at e8m3: 2 paired seeds give no confidence interval (3 needed)" in text


def test_divergence_stops_the_frontier_whatever_the_loss():
    runs = _runs({
        "e6m7": [0.000, 0.001, 0.000, 0.001],    # within
        "e5m7": [0.000, 0.001, "div", 0.001],    # the others' loss is fine, but seed 2 diverged and e8m7's did not
        "e4m7": ["div"] * 4,                     # all diverged
    })
    pts, table = _frontier(runs)
    decisions = dict(zip(pts.variant, pts.decision))
    assert decisions["e5m7"] == "diverged" and decisions["e4m7"] == "diverged"
    e4m7 = pts.set_index("variant").loc["e4m7"]
    assert (e4m7.diverged, e4m7.diverged_low, e4m7.diverged_high) == (4, pytest.approx(stats.beta.ppf(0.025, 4, 1)), 1.0)
    f = _row(table, "exponent bits at M7")
    assert (f.frontier, f.stop, f.stop_decision, f.diverged) == ("e6m7", "e5m7", "diverged", "e5m7, e4m7")
    text = dose.sentence(pts, table, "e8m7", LR, DELTA)
    assert "e5m7 diverges (1/4 runs; the reference 0/4)" in text and "e4m7 diverges (4/4)" in text


def test_a_seed_the_reference_also_lost_is_no_strike():
    runs = _runs({"e8m3": [0.000, 0.001, "div", 0.001]})
    runs.loc[(runs.variant == "e8m7") & (runs.seed == 2), ["status", "final_val_loss"]] = ["diverged", math.nan]
    pts, _ = _frontier(runs)
    e8m3 = pts.set_index("variant").loc["e8m3"]
    assert (e8m3.unmatched_diverged, e8m3.pairs, e8m3.decision) == (0, 3, "within")  # judged on the 3 other seeds


@pytest.mark.parametrize("width, ref, decision, pairs", [
    ([0.000, 0.001, 0.000, 0.001], [0.0] * 4, "within", 4),
    ([0.000, 0.001, "div", 0.001], [0.0] * 4, "diverged", 3),
    ([0.000, 0.001, "div", 0.001], [0.0, 0.0, "div", 0.0], "within", 3),         # the reference lost seed 2 too
    ([0.000, 0.001, 0.000, "div"], [0.0, 0.0, 0.0, None], "diverged", 3),        # the reference never ran seed 3
    ([0.000, 0.001, 0.000, 0.001], [0.0, 0.0, "div", None], "undecided", 2),     # 2 pairs: no interval
    ([0.09, 0.11, 0.10, 0.10], [0.0] * 4, "beyond", 4),
])
def test_the_search_and_the_report_decide_a_width_by_one_rule(width, ref, decision, pairs):
    """`precisionlab frontier`'s judge and the report's dose-response decide a width the same way on the
    same runs (None: the reference has no run of that seed): a seed the width lost and the reference
    got through, or never ran, makes it diverged."""
    from precisionlab.sweep.frontier import judge

    runs = _runs({"e8m3": width})
    for seed, d in enumerate(ref):
        at = (runs.variant == "e8m7") & (runs.seed == seed)
        if d is None:
            runs = runs[~at]
        elif d == "div":
            runs.loc[at, ["status", "final_val_loss"]] = ["diverged", math.nan]
    row = dose.points(runs, "e8m7", DELTA).set_index("variant").loc["e8m3"]
    losses = {s: math.inf if d == "div" else BASE[s] + d for s, d in enumerate(width)}
    reference = {s: math.inf if d == "div" else BASE[s] + d for s, d in enumerate(ref) if d is not None}
    verdict = judge(losses, reference, range(len(BASE)), DELTA)
    assert row.decision == verdict.decision == decision
    assert row.pairs == pairs
    if decision != "diverged":
        assert verdict.n == pairs and (verdict.diff, verdict.low, verdict.high) == pytest.approx(
            (row.delta, row.delta_low, row.delta_high), nan_ok=True)


def test_frontier_per_lr_and_at_every_lr():
    good = [0.000, 0.001, 0.000, 0.001]
    bad = [0.09, 0.11, 0.10, 0.10]
    runs = pd.concat([_runs({"e8m3": good, "e8m2": good}, lr=1e-3),    # frontier e8m2
                      _runs({"e8m3": good, "e8m2": bad}, lr=1e-2)])    # frontier e8m3
    pts, table = _frontier(runs)
    assert _row(table, lr=1e-3).frontier == "e8m2" and _row(table, lr=1e-2).frontier == "e8m3"
    overall = table[table.lr.isna()].iloc[0]
    assert (overall.frontier, overall.limited_by) == ("e8m3", "0.01")
    assert "at every LR: down to e8m3 (set by LR 0.01)" in dose.sentence(pts, table, "e8m7", 1e-3, DELTA)
    runs = pd.concat([runs, _runs({"e8m3": bad, "e8m2": bad}, lr=1e-1)])  # nothing within at 0.1
    pts, table = _frontier(runs)
    overall = table[table.lr.isna()].iloc[0]
    assert (overall.frontier, overall.frontier_x, overall.limited_by) == ("e8m7", 7.0, "0.1")
    assert "at every LR: no narrower width (set by LR 0.1)" in dose.sentence(pts, table, "e8m7", 1e-3, DELTA)


def test_recipes_on_the_bits_axis_are_named_with_their_bits():
    runs = _runs({"nvfp4": [0.000, 0.002, 0.001, 0.001], "mxfp4": [0.09, 0.11, 0.10, 0.10]})
    pts, table = _frontier(runs)
    assert set(pts.axis) == {"bits per element"}
    text = dose.sentence(pts, table, "e8m7", LR, DELTA)
    assert text.startswith("Bits per element: training matches e8m7 down to nvfp4 (4.5 bits) at LR 0.003 (Δ +0.001 [")
    assert "; mxfp4 (4.25 bits) costs +0.100 [" in text and text.endswith(", the first width worse at 95% (before Holm).")


def test_no_axis_no_sentence():
    runs = _runs({}).assign(variant="fp32")
    by_variant = pd.DataFrame({"variant": ["fp32"], "best_lr": [LR], "lrs": [1]})
    result = dose.study(runs, by_variant, DELTA)
    assert result.sentence == "" and result.points.empty and result.frontiers.empty


# --------------------------------------------------------------------------- the margin decision by simulation


def _within_rate(true_delta: float, seeds: int, noise: float, replicates: int, rng) -> tuple[float, float]:
    """Share of `replicates` sweeps (one LR each) where e8m3 is decided "within" / found "worse", for
    e8m3 = e8m7 + true_delta + N(0, noise) per seed (paired), through dose.points."""
    base = 2.0 + rng.normal(0, 0.1, (replicates, seeds))  # seed effects: large, and cancelled by the pairing
    width = base + true_delta + rng.normal(0, noise, (replicates, seeds))
    lr, seed = np.repeat(np.arange(replicates), seeds), np.tile(np.arange(seeds), replicates)
    runs = pd.concat([pd.DataFrame({"variant": v, "lr": lr, "seed": seed, "status": "completed",
                                    "final_val_loss": x.ravel()}) for v, x in (("e8m7", base), ("e8m3", width))])
    pts = dose.points(runs, "e8m7", DELTA)
    mine = pts[pts.variant == "e8m3"]
    assert len(mine) == replicates
    return float((mine.decision == "within").mean()), float(mine.worse.mean())


def _oracle_within(true_delta: float, seeds: int, noise: float) -> float:
    """P(mean + t_{0.99} s/√n < δ) = P(T' > t_{0.99}) with T' noncentral t, n - 1 df, ncp (δ - Δ)√n / σ."""
    return float(stats.nct.sf(stats.t.ppf(0.99, seeds - 1), seeds - 1, (DELTA - true_delta) * math.sqrt(seeds) / noise))


@pytest.mark.slow
@pytest.mark.parametrize("true_delta, seeds", [(DELTA / 2, 10), (DELTA, 10), (2 * DELTA, 10), (DELTA / 2, 3), (0.0, 6)])
def test_margin_decision_error_rates_by_simulation(true_delta, seeds):
    noise, replicates = 0.006, 800
    within, worse = _within_rate(true_delta, seeds, noise, replicates, np.random.default_rng(seeds * 1000 + int(true_delta * 1e4)))
    expected = _oracle_within(true_delta, seeds, noise)
    tolerance = 4 * math.sqrt(max(expected * (1 - expected), 1e-4) / replicates)
    print(f"true Δ = {true_delta:g} (δ = {DELTA:g}), {seeds} seeds, noise sd {noise:g}: within {within:.3f} "
          f"(noncentral t: {expected:.3f}), worse {worse:.3f}")
    assert abs(within - expected) <= tolerance
    if true_delta == DELTA / 2 and seeds == 10:
        assert within >= 0.9  # enough seeds: a width half a margin worse is called within most of the time
    if true_delta >= DELTA:
        assert within <= 0.01 + tolerance  # at the margin: a 1% one-sided test
    if true_delta == 2 * DELTA:
        assert within == 0.0 and worse == 1.0
    if true_delta == 0.0:  # no difference: "worse" is the other one-sided 1% test
        assert worse <= 0.01 + 4 * math.sqrt(0.01 * 0.99 / replicates)


# --------------------------------------------------------------------------- the report and its command


def _record(store, fmt, seed, status, final, sweep="bits"):
    config = {"model": {"arch": "gpt2", "n_layer": 2}, "optim": {"lr": LR}, "seed": seed,
              "precision": {"name": "mask", "format": fmt, "x": fmt, "w": fmt, "grad": fmt, "rounding": "toward_zero"}}
    rid = run_id(config)
    assert store.claim_run(rid, config, sweep)
    with store.recorder(rid) as rec:
        rec.log(1, "train", {"loss": 5.5})
        if final is not None:
            rec.log(10, "val", {"loss": final})
            rec.log(10, "train", {"loss": final})
        rec.finish({"status": status, "diverged_step": 5 if status == "diverged" else None, "spikes": 0})


def test_report_leads_with_the_sentence_and_embeds_the_figure(tmp_path):
    store = ResultsStore(tmp_path / "store.db")
    store.add_sweep("bits", command="test")
    deltas = {"e8m7": [0, 0, 0], "e8m3": [0.001, 0.000, 0.002], "e8m1": [0.30, 0.32, 0.31], "e4m7": [None] * 3}
    for fmt, values in deltas.items():
        for seed, d in enumerate(values):
            _record(store, fmt, seed, "diverged" if d is None else "completed", None if d is None else 3.0 + seed / 10 + d)
    report = build(store, "bits", margin=0.05)
    assert report.dose.margin == 0.05
    assert report.dose.sentence.startswith("Mantissa bits at E8: training matches e8m7 down to e8m3 at LR 0.003")
    assert "margin 0.05" in report.dose.sentence and "e8m1 costs +0.310 [" in report.dose.sentence
    assert "Exponent bits at M7: no narrower width matches e8m7" in report.dose.sentence
    assert "e4m7 diverges (3/3 runs; the reference 0/3)" in report.dose.sentence
    files = {p.name: p for p in write(report, tmp_path / "out")}
    assert {"dose_response.png", "dose_response.csv", "frontier.csv"} <= set(files)
    md = files["report.md"].read_text(encoding="utf-8").split("\n## ")[0]  # before the first section
    assert "**Mantissa bits at E8: training matches e8m7 down to e8m3" in md
    page = files["report.html"].read_text(encoding="utf-8")
    top = page.split("<h2>")[0]
    assert '<p class="headline">Mantissa bits at E8: training matches e8m7 down to e8m3' in top
    assert 'alt="dose_response.png" src="data:image/png;base64,' in page
    assert files["dose_response.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("value", ["-1", "0", "abc", "nan", "inf"])
def test_cli_margin_must_be_a_positive_number(tmp_path, monkeypatch, value):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["report", "--margin", value, "--store", "missing.db"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: --margin {value}: not a usable margin; accepted: a number > 0 "
                                                  f"in nats per byte, e.g. 0.02"]
    assert list(tmp_path.iterdir()) == []
