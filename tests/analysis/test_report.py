"""The report as a whole (build, headline, notes, display, labels) on the known and planted sweeps of
tests/helpers/known_sweep.py, whose comments work out every expectation by hand. The per-module
tests of the same sweeps are in test_estimates.py, test_verdicts.py, test_where.py and test_compare.py."""

from __future__ import annotations

import pytest

from helpers.known_sweep import SWEEP, known_config, known_store, planted_store, record_run
from precisionlab.analysis.labels import bits_per_element, display_label, format_family, format_order
from precisionlab.analysis.report import build
from precisionlab.analysis.stats import fisher_greater
from precisionlab.analysis.tables import display_by_lr
from precisionlab.store import ResultsStore


@pytest.fixture
def store(tmp_path):
    return known_store(tmp_path)


def test_display_strings(store):
    shown = display_by_lr(build(store, SWEEP).by_lr)
    row = shown[(shown.format == "e8m7") & (shown.lr == "0.01")].iloc[0]
    assert (row.diverged, row["median div. step"], row["final val loss"]) == ("1/2", "40", "3.5000")
    row = shown[(shown.format == "fp32") & (shown.lr == "0.001")].iloc[0]
    assert row["final val loss"] == "3.1000 ± 0.1414"
    assert "failed" in shown.columns


def test_pending_runs_are_noted_not_counted(store):
    store.register_runs([known_config(None, 1e-3, 2)], sweep=SWEEP)
    report = build(store, SWEEP)
    row = report.by_lr.set_index(["variant", "lr"]).loc[("fp32", 1e-3)]
    assert (row.runs, row.finished) == (3, 2) and row.lr_loss == pytest.approx(3.1)
    assert any("1 run(s) pending" in note for note in report.notes)


def test_format_order_reads_the_bit_reduction_top_to_bottom():
    names = ["e7m7", "e8m3", "bf16", "e8m5", "fp32", "e4m3fn/e4m3fn/e5m2", "e8m4", "e8m6", "e5m2", "mystery",
             "mxfp4", "nvfp4", "mxfp8", "mxfp6", "e2m1fn:b16x16:e4m3fn:amax:tensor", "e2m1fn"]
    # bits per element: 32, 16, 15, 15, 14, 13, 12, 8, 8, 8.25, 6.25, 4.5, 4.25, 4 + 8/256, 4
    assert sorted(names, key=format_order) == [
        "fp32", "bf16", "e8m6", "e7m7", "e8m5", "e8m4", "e8m3", "mxfp8", "e5m2", "e4m3fn/e4m3fn/e5m2",
        "mxfp6", "nvfp4", "mxfp4", "e2m1fn:b16x16:e4m3fn:amax:tensor", "e2m1fn", "mystery"]


def test_bits_per_element_counts_the_scales():
    # written out from the formats' definitions: element bits + scale bits / block elements
    assert bits_per_element("mxfp4") == 4 + 8 / 32
    assert bits_per_element("nvfp4") == 4 + 8 / 16
    assert bits_per_element("mxfp8_e5m2") == 8 + 8 / 32
    assert bits_per_element("e4m3fn:b128:fp32") == 8 + 32 / 128
    assert bits_per_element("e2m1fn:b16x16:e4m3fn:amax:tensor") == 4 + 8 / 256
    assert bits_per_element("e4m3fn/e4m3fn/e5m2") == 8
    assert bits_per_element("nvfp4/e2m1fn:b16x16:e4m3fn:amax:tensor/nvfp4 [hadamard=16]") == (4.5 + 4 + 8 / 256 + 4.5) / 3
    assert bits_per_element("mystery") is None
    assert format_family("e8m3") == "E8" and format_family("mxfp4") == format_family("mxfp8") != format_family("nvfp4")


def test_block_format_variants_are_readable_and_sorted_by_bits(tmp_path):
    store = ResultsStore(tmp_path / "store.db")
    store.add_sweep("fp4")
    nvfp4 = known_config("nvfp4", 1e-3, 0, "nearest_even")
    nvfp4["precision"]["w"] = "e2m1fn/b16x16/e4m3fn/amax/tensor"
    for cfg in (known_config("mxfp4", 1e-3, 0, "nearest_even"), nvfp4, known_config("bf16", 1e-3, 0, "nearest_even"),
                known_config("mxfp8", 1e-3, 0, "nearest_even")):
        record_run(store, cfg, "completed", 3.0, None, 0, sweep="fp4")
    table = build(store, "fp4").by_variant
    assert list(table.variant) == ["bf16", "mxfp8", "nvfp4/e2m1fn:b16x16:e4m3fn:amax:tensor/nvfp4", "mxfp4"]


def test_variants_name_what_else_varies(tmp_path):
    store = ResultsStore(tmp_path / "store.db")
    store.add_sweep("roundings")
    for rounding in ("toward_zero", "nearest_even"):
        record_run(store, known_config("e8m3", 1e-3, 0, rounding), "completed", 3.0, None, 0, sweep="roundings")
    fp8 = known_config("e4m3fn", 1e-3, 0, "toward_zero")
    fp8["precision"]["grad"] = "e5m2"
    record_run(store, fp8, "completed", 3.0, None, 0, sweep="roundings")
    variants = set(build(store, "roundings").runs.variant)
    assert variants == {"e8m3 [rounding=toward_zero]", "e8m3 [rounding=nearest_even]",
                        "e4m3fn/e4m3fn/e5m2 [rounding=toward_zero]"}


@pytest.mark.parametrize("counts", [(1, 4, 0, 4), (2, 18, 1, 18), (3, 18, 1, 18), (0, 5, 3, 5), (6, 6, 0, 6), (2, 3, 2, 9)])
def test_fisher_p_value_matches_scipy(counts):
    from scipy.stats import fisher_exact

    diverged, runs, ref_diverged, ref_runs = counts
    table = [[diverged, runs - diverged], [ref_diverged, ref_runs - ref_diverged]]
    assert fisher_greater(*counts) == pytest.approx(fisher_exact(table, alternative="greater").pvalue, rel=1e-12)


def test_recipe_presets_are_labelled_by_name(tmp_path):
    """Presets that share formats but differ in operand settings (nvfp4 vs its ablations) are told
    apart by their names, not by a list of keys with 'nan' for the ones a preset leaves unset."""
    store = ResultsStore(tmp_path / "store.db")
    store.add_sweep("fp4", command="test")
    nvfp4 = {"name": "nvfp4", "format": "nvfp4", "x": "nvfp4", "w": "e2m1fn/b16x16/e4m3fn/tensor", "grad": "nvfp4",
             "operands": {"dgrad_g": {"rounding": "stochastic"}}, "hadamard": {"size": 16}}
    no_rht = {**nvfp4, "name": "nvfp4_no_rht", "hadamard": {"size": 0}}
    no_sr = {**nvfp4, "name": "nvfp4_no_sr", "operands": {}}
    mxfp4 = {"name": "mxfp4", "format": "mxfp4", "x": "mxfp4", "w": "mxfp4", "grad": "mxfp4"}
    mxfp4_sr = {**mxfp4, "name": "mxfp4_rht_sr", "operands": {"wgrad_g": {"rounding": "stochastic"}}}
    for precision in (nvfp4, no_rht, no_sr, mxfp4, mxfp4_sr):
        record_run(store, {"precision": precision, "optim": {"lr": 1e-3}, "seed": 0}, "completed", 3.0, None, 0, sweep="fp4")
    variants = list(build(store, "fp4").by_variant.variant)
    w = "e2m1fn:b16x16:e4m3fn:tensor"
    assert variants == [f"nvfp4/{w}/nvfp4 [nvfp4]", f"nvfp4/{w}/nvfp4 [nvfp4_no_rht]", f"nvfp4/{w}/nvfp4 [nvfp4_no_sr]",
                        "mxfp4", "mxfp4 [mxfp4_rht_sr]"]
    assert all("nan" not in v for v in variants)
    assert [display_label(v) for v in variants] == ["nvfp4", "nvfp4_no_rht", "nvfp4_no_sr", "mxfp4", "mxfp4 [mxfp4_rht_sr]"]


def test_headline_warns_when_holm_leaves_the_sensitivity_test_unable_to_reach_alpha(tmp_path):
    # 6 paired seeds: the permutation test alone can reach 2/64 = 0.031 < 0.05, but the family holds
    # 2 ΔS tests (e8m7, e8m3 against fp32), e8m3's divergence test and 6 loss tests (paired t, no
    # floor) that can reach far lower p (e8m7's divergence test is out: none of its or fp32's runs
    # diverged): at best a ΔS test is adjusted by 2, 0.0625 >= 0.05; with 7 seeds 2 x 2/128 = 0.031 would do
    report = build(planted_store(tmp_path, seeds=6), "planted")
    assert ("With 6 paired seeds, the smallest adjusted p the LR-sensitivity test can reach is 0.062 (≥ α = 0.05; "
            "Holm over the 9 tests that can reach α)") in report.headline()
    assert "7 paired seeds would be needed" in report.headline()


def test_headline_does_not_warn_when_the_family_can_reach_alpha(tmp_path):
    report = build(planted_store(tmp_path, seeds=8), "planted")  # 2 x 2/256 = 0.016
    assert "cannot detect" not in report.headline()


def test_two_seeds_print_a_labelled_range_never_a_ci_and_plots_draw_it(store):
    from precisionlab.analysis import plots
    from precisionlab.analysis.tables import display_by_lr, display_by_variant

    report = build(store, SWEEP)
    shown = display_by_variant(report.by_variant).set_index("format")
    assert shown.loc["e8m7", "LR sensitivity"] == "0.650 (range 0.100 to 1.200)"  # per-seed 1.2 and 0.1
    assert shown.loc["e7m7", "LR sensitivity"] == "0.025"  # one seed: the value alone, no [x, x]
    assert shown.loc["e8m7", "ΔS vs ref."] == "+0.450 (range -0.100 to +1.000)"
    per_lr = display_by_lr(report.by_lr).set_index(["format", "lr"])
    assert per_lr.loc[("fp32", "0.001"), "95% CI or range"] == "range 3.0000 to 3.2000"
    assert per_lr.loc[("e7m7", "0.01"), "95% CI or range"] == "–"  # one completed run
    assert not any("[" in cell for cell in per_lr["95% CI or range"])
    assert set(report.by_lr.final_loss_interval) <= {"range", ""}
    figure = plots.loss_vs_lr(report)
    dotted = [c for c in figure.axes[0].collections if c.get_linestyle()[0][1] is not None]
    assert dotted  # the ranges are drawn, dotted


def test_recipe_stats_prints_ranges_for_two_seeds_and_what_holm_leaves_reachable(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    planted_store(tmp_path, seeds=2)
    script = Path(__file__).parents[2] / "scripts" / "recipe_stats.py"
    proc = subprocess.run([sys.executable, str(script), "--store", str(tmp_path / "planted.db"), "--sweep", "planted",
                           "--reference", "fp32"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| e8m7 |")]
    assert len(rows) == 2 and all("(range " in row and "[" not in row.split("|")[4] for row in rows)
    # 3 loss tests over 2 pairs (smallest p 1/2) and 4 divergence tests (smallest 1/6 each): Holm gives
    # the loss tests at best min(1, 3 x 1/2)
    assert "smallest Holm-adjusted p a loss difference can reach here (2 pairs, 7 tests): 1 — no loss" in proc.stdout
