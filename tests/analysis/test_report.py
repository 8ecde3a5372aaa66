"""Report arithmetic on a store built here with known values.

Every expectation is worked out by hand in the comments (initial loss ℓ₀ = 5.5 for every run):

  format  lr     seed 0            seed 1            ℓ per run          ℓ(η)
  fp32    1e-3   3.0               3.2               3.0, 3.2           3.1
  fp32    1e-2   3.4               3.6               3.4, 3.6           3.5    -> sens mean(0, .4) = 0.2
  e8m7    1e-3   3.1 (2 spikes)    3.3 (1 spike)     3.1, 3.3           3.2
  e8m7    1e-2   diverged @ 40     3.5               5.5, 3.5           4.5    -> sens mean(0, 1.3) = 0.65
  e8m3    1e-3   6.0 (> ℓ₀)        3.0               5.5, 3.0           4.25
  e8m3    1e-2   diverged @ 30     diverged @ 50     5.5, 5.5           5.5    -> sens mean(0, 1.25) = 0.625
  e7m7    1e-3   3.3               3.1               3.3, 3.1           3.2
  e7m7    1e-2   3.35              failed            3.35               3.35

Reference fp32 (most bits): diverged 0/4, sens 0.2, seed std at 1e-3 = std(3.0, 3.2) = 0.141421.
LR sensitivity and its interval come from the seeds that finished every LR: for e7m7 seed 0 alone
([3.3, 3.35] -> mean(0, .05) = 0.025; all runs would give mean(0, .15) = 0.075 with seed 1's 3.1).
Two seeds give no confidence interval but their range: e8m7's seeds alone have sensitivities 1.2
([3.1, 5.5]) and 0.1 ([3.3, 3.5]), fp32's 0.2 and 0.2; ΔS per seed: 1.0 and -0.1.
Every verdict is "too few seeds to test": with two seeds no permutation p can be below 0.5 (with
6 tests Holm can bring it no lower than 1), no divergence count can reach 0.05, and the loss is
not tested (the paired t test needs 3 seeds).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from precisionlab.analysis.compare import compare, compare_notes
from precisionlab.analysis.labels import bits_per_element, display_label, format_family, format_order, label_runs
from precisionlab.analysis.report import ReportError, build
from precisionlab.analysis.stats import fisher_greater, fisher_two_sided
from precisionlab.analysis.where import filter_runs
from precisionlab.analysis.tables import display_by_lr
from precisionlab.store import ResultsStore, run_id

L0 = 5.5
SWEEP = "known"
# (format or None for fp32, lr, seed) -> (status, final val loss, diverged step, spikes)
RUNS = {
    (None, 1e-3, 0): ("completed", 3.0, None, 0), (None, 1e-3, 1): ("completed", 3.2, None, 0),
    (None, 1e-2, 0): ("completed", 3.4, None, 0), (None, 1e-2, 1): ("completed", 3.6, None, 0),
    ("e8m7", 1e-3, 0): ("completed", 3.1, None, 2), ("e8m7", 1e-3, 1): ("completed", 3.3, None, 1),
    ("e8m7", 1e-2, 0): ("diverged", 3.0, 40, 0), ("e8m7", 1e-2, 1): ("completed", 3.5, None, 0),
    ("e8m3", 1e-3, 0): ("completed", 6.0, None, 0), ("e8m3", 1e-3, 1): ("completed", 3.0, None, 0),
    ("e8m3", 1e-2, 0): ("diverged", 2.9, 30, 0), ("e8m3", 1e-2, 1): ("diverged", 2.9, 50, 0),
    ("e7m7", 1e-3, 0): ("completed", 3.3, None, 0), ("e7m7", 1e-3, 1): ("completed", 3.1, None, 0),
    ("e7m7", 1e-2, 0): ("completed", 3.35, None, 0), ("e7m7", 1e-2, 1): ("failed", None, None, 0),
}


def _config(fmt, lr, seed, rounding="toward_zero"):
    precision = {"name": "fp32", "format": None, "x": None, "w": None, "grad": None, "rounding": "nearest_even"} \
        if fmt is None else {"name": "mask", "format": fmt, "x": fmt, "w": fmt, "grad": fmt, "rounding": rounding}
    return {"model": {"arch": "gpt2", "n_layer": 2}, "precision": precision, "optim": {"lr": lr}, "seed": seed,
            "store": {"path": "ignored"}, "train": {"threads": seed}}  # threads vary but are not semantic


def _record(store, cfg, status, final, diverged_step, spikes, sweep=SWEEP):
    rid = run_id(cfg)
    assert store.claim_run(rid, cfg, sweep)
    with store.recorder(rid) as rec:
        rec.log(1, "train", {"loss": L0})
        if final is not None:
            rec.log(10, "val", {"loss": final})  # a diverged run's earlier eval must not count
        if status == "diverged":
            rec.log(diverged_step, "train", {"loss": math.inf})
        rec.finish({"status": status, "diverged_step": diverged_step, "spikes": spikes,
                    **({"error": "RuntimeError: boom"} if status == "failed" else {})})
    return rid


@pytest.fixture
def store(tmp_path):
    store = ResultsStore(tmp_path / "store.db")
    store.add_sweep(SWEEP, command="test")
    for (fmt, lr, seed), outcome in reversed(RUNS.items()):  # insertion order must not matter
        _record(store, _config(fmt, lr, seed), *outcome)
    return store


def test_per_format_and_lr_table(store):
    table = build(store, SWEEP).by_lr.set_index(["variant", "lr"])
    assert list(dict.fromkeys(table.index.get_level_values(0))) == ["fp32", "e8m7", "e7m7", "e8m3"]
    row = table.loc[("e8m7", 1e-2)]
    assert (row.runs, row.finished, row.diverged, row.failed) == (2, 2, 1, 0)
    assert row.diverged_frac == 0.5 and row.median_diverged_step == 40
    assert row.final_loss_mean == pytest.approx(3.5) and math.isnan(row.final_loss_std) and row.final_loss_n == 1
    assert row.lr_loss == pytest.approx(4.5)
    row = table.loc[("e8m3", 1e-2)]
    assert (row.diverged, row.finished, row.median_diverged_step, row.final_loss_n) == (2, 2, 40, 0)
    assert math.isnan(row.final_loss_mean) and row.lr_loss == pytest.approx(L0)
    row = table.loc[("e8m3", 1e-3)]  # the mean of final losses is uncapped; ℓ(η) is capped
    assert row.final_loss_mean == pytest.approx(4.5) and row.final_loss_std == pytest.approx(np.std([6.0, 3.0], ddof=1))
    assert row.lr_loss == pytest.approx(4.25)
    row = table.loc[("e7m7", 1e-2)]
    assert (row.runs, row.finished, row.failed, row.lr_loss) == (2, 1, 1, pytest.approx(3.35))
    assert table.loc[("fp32", 1e-2)].final_loss_std == pytest.approx(np.std([3.4, 3.6], ddof=1))
    assert table.loc[("e8m7", 1e-3)].spikes == 3


def test_per_format_table_and_verdicts(store):
    report = build(store, SWEEP)
    table = report.by_variant.set_index("variant")
    assert list(table.index) == ["fp32", "e8m7", "e7m7", "e8m3"] and report.reference == "fp32"
    expected_sensitivity = {"fp32": 0.2, "e8m7": 0.65, "e8m3": 0.625, "e7m7": 0.025}
    for variant, value in expected_sensitivity.items():
        assert table.loc[variant, "lr_sensitivity"] == pytest.approx(value), variant
    assert table.loc["fp32", "best_lr"] == 1e-3 and table.loc["fp32", "seed_std"] == pytest.approx(0.1414213562)
    assert table.loc["e7m7", "best_lr"] == 1e-3 and table.loc["e8m3", "best_lr"] == 1e-3
    assert table.loc["e8m3", "best_lr_loss"] == pytest.approx(4.5)
    assert (table.loc["e8m3", "diverged"], table.loc["e8m3", "finished"], table.loc["e8m3", "diverged_frac"]) == (2, 4, 0.5)
    assert (table.loc["e7m7", "finished"], table.loc["e7m7", "failed"]) == (3, 1)
    assert (table.loc["e8m3", "stable_lrs"], table.loc["e8m3", "lrs"]) == (1, 2)
    assert table.loc["e8m7", "initial_loss"] == pytest.approx(L0)
    assert list(table.verdict) == ["reference"] + ["too few seeds to test"] * 3
    assert (table.loc["e8m7", "lr_sensitivity_low"], table.loc["e8m7", "lr_sensitivity_high"]) == pytest.approx((0.1, 1.2))
    assert (table.loc["fp32", "lr_sensitivity_low"], table.loc["fp32", "lr_sensitivity_high"]) == pytest.approx((0.2, 0.2))
    assert set(table.lr_sensitivity_interval) == {"range", ""}  # 2 seeds: ranges; e7m7's one seed: none
    assert table.loc["e7m7", "lr_sensitivity_interval"] == "" and np.isnan(table.loc["e7m7", "lr_sensitivity_low"])
    assert table.loc["e8m7", "sensitivity_diff"] == pytest.approx(0.45) and table.loc["e8m7", "p_sensitivity"] == 1.0
    assert table.loc["e7m7", "paired_seeds"] == 1  # seed 1 failed at 1e-2: only seed 0 finished both LRs
    assert "diverged 1/4 vs 0/4" in table.loc["e8m7", "reason"] and "ΔS = +0.450 (range -0.100 to +1.000)" in table.loc["e8m7", "reason"]
    assert report.headline().startswith("Against fp32 (reference; 2 paired seeds, Holm-adjusted α = 0.05): Too few seeds to test: e8m7")
    assert "loss not tested: at most 2 seeds completed in both at an LR (the paired t test needs 3)" in table.loc["e8m7", "reason"]
    assert "With 2 paired seeds the loss is not tested: the paired t test needs 3" in report.headline()
    # no test here can reach 0.05 (2 seeds: a ΔS test's floor is 1/2; the divergence counts' floors are above 0.05)
    assert ("With 2 paired seeds, the smallest adjusted p the LR-sensitivity test can reach is 0.5 (≥ α = 0.05; "
            "no test here can reach α)") in report.headline()
    assert any("1 run(s) failed" in note for note in report.notes)


def test_diverged_and_did_not_converge_are_apart(store):
    # The reference fp32's loss at its best LR (1e-3) is 3.1: a completed run must end below
    # ℓ₀ - 0.5 (ℓ₀ - 3.1) = 4.3. e8m3 seed 0 at 1e-3 ended at 6.0: did not converge.
    report = build(store, SWEEP)
    outcome = report.runs.set_index(["variant", "lr", "seed"]).outcome
    assert outcome[("e8m3", 1e-3, 0)] == "did not converge" and outcome[("e8m3", 1e-3, 1)] == "converged"
    assert outcome[("e8m3", 1e-2, 0)] == "diverged" and outcome[("e7m7", 1e-2, 1)] == "failed"
    assert (report.runs.outcome == "did not converge").sum() == 1
    assert report.by_variant.set_index("variant").not_converged.to_dict() == {"fp32": 0, "e8m7": 0, "e7m7": 0, "e8m3": 1}
    assert report.by_lr.set_index(["variant", "lr"]).not_converged[("e8m3", 1e-3)] == 1


def test_display_strings(store):
    shown = display_by_lr(build(store, SWEEP).by_lr)
    row = shown[(shown.format == "e8m7") & (shown.lr == "0.01")].iloc[0]
    assert (row.diverged, row["median div. step"], row["final val loss"]) == ("1/2", "40", "3.5000")
    row = shown[(shown.format == "fp32") & (shown.lr == "0.001")].iloc[0]
    assert row["final val loss"] == "3.1000 ± 0.1414"
    assert "failed" in shown.columns


def test_pending_runs_are_noted_not_counted(store):
    store.register_runs([_config(None, 1e-3, 2)], sweep=SWEEP)
    report = build(store, SWEEP)
    row = report.by_lr.set_index(["variant", "lr"]).loc[("fp32", 1e-3)]
    assert (row.runs, row.finished) == (3, 2) and row.lr_loss == pytest.approx(3.1)
    assert any("1 run(s) pending" in note for note in report.notes)


def test_sharpness_per_format_and_step(store):
    runs = build(store, SWEEP).runs.set_index(["format", "lr", "seed"])
    values = {("e8m7", 1e-3, 0): (1.0, 3.0), ("e8m7", 1e-3, 1): (2.0, 5.0), ("e8m3", 1e-3, 0): (4.0, 4.0)}
    for key, (at10, at20) in values.items():
        store.add_sharpness(runs.loc[key, "run_id"], 10, "logit", at10, {"eps": 1e-3})
        store.add_sharpness(runs.loc[key, "run_id"], 20, "logit", at20, {"eps": 1e-3})
    steps = build(store, SWEEP).sharpness_steps.set_index(["variant", "step"])
    assert set(steps.metric) == {"logit"} and set(steps.params) == {"eps=0.001"}
    assert steps.loc[("e8m7", 20), "mean"] == pytest.approx(4.0) and steps.loc[("e8m7", 20), "n"] == 2
    assert steps.loc[("e8m7", 10), "std"] == pytest.approx(np.std([1.0, 2.0], ddof=1))
    assert steps.loc[("e8m3", 10), "mean"] == 4.0 and steps.loc[("e8m3", 10), "n"] == 1
    assert list(dict.fromkeys(steps.index.get_level_values(0))) == ["e8m7", "e8m3"]


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
    nvfp4 = _config("nvfp4", 1e-3, 0, "nearest_even")
    nvfp4["precision"]["w"] = "e2m1fn/b16x16/e4m3fn/amax/tensor"
    for cfg in (_config("mxfp4", 1e-3, 0, "nearest_even"), nvfp4, _config("bf16", 1e-3, 0, "nearest_even"),
                _config("mxfp8", 1e-3, 0, "nearest_even")):
        _record(store, cfg, "completed", 3.0, None, 0, sweep="fp4")
    table = build(store, "fp4").by_variant
    assert list(table.variant) == ["bf16", "mxfp8", "nvfp4/e2m1fn:b16x16:e4m3fn:amax:tensor/nvfp4", "mxfp4"]


def test_variants_name_what_else_varies(tmp_path):
    store = ResultsStore(tmp_path / "store.db")
    store.add_sweep("roundings")
    for rounding in ("toward_zero", "nearest_even"):
        _record(store, _config("e8m3", 1e-3, 0, rounding), "completed", 3.0, None, 0, sweep="roundings")
    fp8 = _config("e4m3fn", 1e-3, 0, "toward_zero")
    fp8["precision"]["grad"] = "e5m2"
    _record(store, fp8, "completed", 3.0, None, 0, sweep="roundings")
    variants = set(build(store, "roundings").runs.variant)
    assert variants == {"e8m3 [rounding=toward_zero]", "e8m3 [rounding=nearest_even]",
                        "e4m3fn/e4m3fn/e5m2 [rounding=toward_zero]"}


def test_where_filters(store):
    runs = label_runs(store.runs(sweep=SWEEP))
    assert set(filter_runs(runs, ["format=e8m7,fp32"]).format) == {"e8m7", "fp32"}
    assert set(filter_runs(runs, ["lr=1e-3"]).lr) == {1e-3}
    kept = filter_runs(runs, ["lr < 0.005 and seed == 0", "format != 'e7m7'"])
    assert sorted(kept.format) == ["e8m3", "e8m7", "fp32"] and set(kept.seed) == {0}
    report = build(store, SWEEP, ["format=e8m3,e7m7"])
    assert list(report.by_variant.variant) == ["e7m7", "e8m3"] and report.reference == "e7m7"
    assert any("8 of 16 runs" in note for note in report.notes)


@pytest.mark.parametrize("where, message", [
    (["colour=red"], "unknown column 'colour'"),
    (["lr=fast"], "lr takes numbers"),
    (["lr <<< 3"], "is not a usable filter"),
    (["nonsense_column > 3"], "is not a usable filter"),
    (["lr in 3"], "in / not in take a list"),
    (["format < 3"], "is not a usable filter"),
])
def test_bad_where_is_one_line(store, where, message):
    with pytest.raises(ReportError, match=message) as info:
        build(store, SWEEP, where)
    assert "\n" not in str(info.value)


def test_where_accepts_comparisons_lists_and_boolean_logic(store):
    runs = label_runs(store.runs(sweep=SWEEP))
    assert set(filter_runs(runs, ["format in ['e8m7', 'fp32']"]).format) == {"e8m7", "fp32"}
    assert set(filter_runs(runs, ["format not in ('e8m7', 'fp32') and not seed == 1"]).seed) == {0}
    assert set(filter_runs(runs, ["1e-3 <= lr < 5e-3"]).lr) == {1e-3}
    assert len(filter_runs(runs, ["lr > -1 or seed == 99"])) == len(runs)


@pytest.mark.parametrize("escape", [
    "lr.to_csv.__globals__['sys'].modules['os'].system('touch PWNED') == 0",
    "__import__('os').system('touch PWNED') == 0",
    "@lr.__class__ == 1",
    "(lambda: open('PWNED', 'w'))() == 1",
    "seed == seed.__class__.__mro__[-1].__subclasses__()",
    "[x for x in ().__class__.__base__.__subclasses__()] == 1",
    "format == f'{open(\"PWNED\", \"w\")}'",
])
def test_where_runs_no_code(store, escape, tmp_path, monkeypatch):
    """--where went to pandas' query, which evaluates Python: these ran commands. Now only
    names, literals, comparisons and and/or/not are evaluated; everything else is refused."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ReportError, match="is not a usable filter") as info:
        build(store, SWEEP, [escape])
    assert "\n" not in str(info.value) and not (tmp_path / "PWNED").exists()


def test_empty_store_unknown_sweep_and_empty_selection(tmp_path, store):
    with pytest.raises(ReportError, match="holds no sweeps"):
        build(ResultsStore(tmp_path / "empty.db"))
    with pytest.raises(ReportError, match=r"unknown sweep 'nope'.*sweeps there: known"):
        build(store, "nope")
    with pytest.raises(ReportError, match="no runs matching"):
        build(store, SWEEP, ["format=e5m2"])
    assert build(store).sweep == SWEEP  # the latest by default


@pytest.mark.parametrize("counts", [(1, 4, 0, 4), (2, 18, 1, 18), (3, 18, 1, 18), (0, 5, 3, 5), (6, 6, 0, 6), (2, 3, 2, 9)])
def test_fisher_p_value_matches_scipy(counts):
    from scipy.stats import fisher_exact

    diverged, runs, ref_diverged, ref_runs = counts
    table = [[diverged, runs - diverged], [ref_diverged, ref_runs - ref_diverged]]
    assert fisher_greater(*counts) == pytest.approx(fisher_exact(table, alternative="greater").pvalue, rel=1e-12)


def test_verdict_reasons_carry_the_holm_adjusted_p_values(store):
    table = build(store, SWEEP).by_variant.set_index("variant")
    assert math.isnan(table.loc["fp32", "p_more_diverged"])
    # stratified by LR: at 1e-3 nothing diverged (no information), at 1e-2 e8m3 2/2 against fp32 0/2:
    # one table with margins 2 of 4 diverged, P(both in e8m3) = 1 / C(4, 2); pooled it would be 2/4 vs 0/4
    assert table.loc["e8m3", "p_more_diverged"] == pytest.approx(1 / 6)
    assert table.loc["e8m3", "p_diverged"] == pytest.approx(2 / 6)  # two-sided: 2/2 vs 0/2 or 0/2 vs 2/2
    assert table.loc["e8m3", "p_diverged_holm"] >= table.loc["e8m3", "p_diverged"]
    assert f"diverged 1/4 vs 0/4, Holm p = {table.loc['e8m7', 'p_diverged_holm']:.2g}" in table.loc["e8m7", "reason"]


def _planted_store(tmp_path, seeds: int = 8) -> ResultsStore:
    """fp32 and two formats over LRs 1e-3, 1e-2 and `seeds` seeds, losses drawn around known curves:
    e8m3 is planted less stable (1e-2 diverges in every seed), e8m7 is fp32's twin (same curve,
    fresh noise)."""
    rng = np.random.default_rng(0)
    store = ResultsStore(tmp_path / "planted.db")
    for fmt in (None, "e8m7", "e8m3"):
        for seed in range(seeds):
            for lr, mean in ((1e-3, 3.0), (1e-2, 3.3)):
                if fmt == "e8m3" and lr == 1e-2:
                    _record(store, _config(fmt, lr, seed), "diverged", None, 20, 0, sweep="planted")
                else:
                    _record(store, _config(fmt, lr, seed), "completed", mean + rng.normal(0, 0.05), None, 0, sweep="planted")
    return store


def test_a_planted_difference_is_less_stable_and_a_null_one_is_not(tmp_path):
    report = build(_planted_store(tmp_path), "planted")
    table = report.by_variant.set_index("variant")
    assert table.loc["e8m3", "verdict"] == "less stable"
    # ΔS: e8m3's ℓ(1e-2) is ℓ₀ = 5.5, so its sensitivity is about (5.5 - 3.0) / 2 against fp32's 0.15
    assert table.loc["e8m3", "sensitivity_diff"] == pytest.approx(1.1, abs=0.05)
    assert table.loc["e8m3", "p_sensitivity"] == 2 / 2**8 and table.loc["e8m3", "sensitivity_diff_low"] > 0
    assert table.loc["e8m3", "p_diverged"] == pytest.approx(fisher_two_sided(8, 8, 0, 8))  # the 1e-2 stratum
    assert table.loc["e8m7", "verdict"] == "no difference detected"
    assert table.loc["e8m7", "sensitivity_diff_low"] <= 0 <= table.loc["e8m7", "sensitivity_diff_high"]
    # decided by the divergence test (8/8 against 0/8 at 1e-2, p = 2 / C(16, 8) before Holm); ΔS's
    # exact p of 2/256 is Holm-adjusted over the family's 9 tests that can reach α (e8m3's divergence
    # test, 2 ΔS, 6 loss tests of the twins' curves, none of them small; e8m7's divergence test is
    # left out: no run of it or the reference diverged, its p is 1 whatever happens) to 8 x 2/256 =
    # 0.0625: not decisive
    assert table.loc["e8m3", "decided_by"] == "divergence"
    assert table.loc["e8m3", "p_sensitivity_holm"] == pytest.approx(8 * 2 / 2**8)
    assert "Less stable: e8m3 (by divergence: diverged 8/16 vs 0/16, Holm p = " in report.headline()
    assert ". No difference detected: e8m7" in report.headline()


def test_compare_two_sweeps(store):
    # sweep "other": e8m3 only, lr 1e-3 and 1e-2, one seed: 3.0 completed, 1e-2 diverged -> 1/2, sens mean(0, 2.5)
    _record(store, _config("e8m3", 1e-3, 0, "nearest_even"), "completed", 3.0, None, 0, sweep="other")
    _record(store, _config("e8m3", 1e-2, 0, "nearest_even"), "diverged", None, 12, 0, sweep="other")
    a, b = build(store, SWEEP), build(store, "other")
    table = compare(a, b).set_index("variant")
    assert list(table.index) == ["fp32", "e8m7", "e7m7", "e8m3"]
    row = table.loc["e8m3"]
    assert (row.diverged_a, row.finished_a, row.diverged_b, row.finished_b) == (2, 4, 1, 2)
    assert row.lr_sensitivity_a == pytest.approx(0.625) and row.lr_sensitivity_b == pytest.approx(1.25)
    # per LR: at 1e-3 nothing diverged, at 1e-2 everything did: no stratum says anything, p = 1
    assert row.p_a_more_diverged == pytest.approx(1.0) and row.p_b_more_diverged == pytest.approx(1.0)
    # paired over the seed both ran (seed 0): ΔS = 1.25 - 0 (a's seed 0: 6.0 capped at 5.5 and 5.5), and
    # the best-LR loss 3.0 - 6.0; one pair: no interval at all, the difference alone
    assert row.sensitivity_diff == pytest.approx(1.25) and row.loss_diff == pytest.approx(-3.0)
    assert row.sensitivity_diff_interval == "" and math.isnan(row.sensitivity_diff_low)
    assert math.isnan(table.loc["fp32", "finished_b"]) and math.isnan(table.loc["fp32", "p_a_more_diverged"])
    assert compare_notes(a, b) == []  # same LR grid, same steps and model in both


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
        _record(store, {"precision": precision, "optim": {"lr": 1e-3}, "seed": 0}, "completed", 3.0, None, 0, sweep="fp4")
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
    report = build(_planted_store(tmp_path, seeds=6), "planted")
    assert ("With 6 paired seeds, the smallest adjusted p the LR-sensitivity test can reach is 0.062 (≥ α = 0.05; "
            "Holm over the 9 tests that can reach α)") in report.headline()
    assert "7 paired seeds would be needed" in report.headline()


def test_headline_does_not_warn_when_the_family_can_reach_alpha(tmp_path):
    report = build(_planted_store(tmp_path, seeds=8), "planted")  # 2 x 2/256 = 0.016
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

    _planted_store(tmp_path, seeds=2)
    script = Path(__file__).parents[2] / "scripts" / "recipe_stats.py"
    proc = subprocess.run([sys.executable, str(script), "--store", str(tmp_path / "planted.db"), "--sweep", "planted",
                           "--reference", "fp32"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| e8m7 |")]
    assert len(rows) == 2 and all("(range " in row and "[" not in row.split("|")[4] for row in rows)
    # 3 loss tests over 2 pairs (smallest p 1/2) and 4 divergence tests (smallest 1/6 each): Holm gives
    # the loss tests at best min(1, 3 x 1/2)
    assert "smallest Holm-adjusted p a loss difference can reach here (2 pairs, 7 tests): 1 — no loss" in proc.stdout
