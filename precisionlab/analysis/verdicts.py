"""The tests of each variant against the reference, and the verdict they give.

The reference is the variant with the most bits, listed first (`labels.variant_sorted`); the
descriptive columns the tests start from are `estimates.by_variant_estimates`'.

Definitions (the README's "Reading a report" repeats them):
  verdict       against the reference (the variant with the most bits, listed first), by these
                tests per variant, all Holm-adjusted together (one family: every test of every
                variant):
                  loss       the final validation loss at each LR both ran, paired by seed over
                             the seeds whose runs completed in both; paired t test on the
                             differences (stats.paired_t_p, the scale of the printed interval:
                             p < 0.05 exactly when its 95% interval excludes 0), not run below 3
                             pairs. The sign-flip permutation test cannot go below 2 / 2^n, 0.25 at
                             3 seeds: no loss difference could ever be detected with it.
                  best loss  the same on the best validation loss (min over evaluations, the
                             runs table's min_val_loss): a late spike or a bad last evaluation
                             does not hide what the run reached.
                  LR sensitivity  paired over seeds (the same seed gives the same initial weights
                             and batches in every variant; exact permutation test swapping the two
                             variants within seeds, with the interval of the difference ΔS); only
                             when the reference ran more than one LR: a one-LR grid has none.
                  divergence exact conditional test stratified by LR, two-sided.
                Diverged runs enter the loss tests not at all: they are the divergence test's. A
                diverged run counted at the bar ℓ₀ (capped_loss) would make the paired t test
                unsound: under no effect, with runs diverging at random (the edge of stability,
                where a format's numerics decide little), a variant whose 3 seeds all diverged
                against a reference whose 3 did not gives differences ℓ₀ − ℓ of nearly equal size,
                which the t test reads as a precise, huge effect while the exact divergence test
                rightly gives 0.1 (simulated: 6% of null sweeps got a false verdict that way, 1.3%
                without diverged runs in the loss tests; tests/analysis/test_verdict_family.py).
                LR sensitivity keeps ℓ₀ for diverged runs: its permutation test is exact whatever
                the losses' distribution.
                "less stable" / "more stable" when a Holm-adjusted p is below ALPHA in that
                direction (higher loss, larger ΔS or more divergence is worse), "mixed" when both,
                and the verdict names the tests that decided it (decided_by), with the difference,
                its interval and the adjusted p; else "no difference detected", with each test's
                numbers (for the loss, the LR whose test came closest). "too few seeds to test"
                when no test of the variant could reach an adjusted p below ALPHA with the runs it
                has (e.g. two seeds: no loss test, and no divergence count reaches it): a variant
                whose runs all diverged with too few seeds reads so, never "no difference
                detected". The headline says what each test can detect with these seeds
                (`detectability`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from precisionlab.analysis.estimates import by_variant_estimates, seed_matrix
from precisionlab.analysis.labels import variant_sorted
from precisionlab.analysis.stats import (
    holm_reachable,
    interval_text,
    paired_difference,
    paired_sensitivity,
    paired_t_p,
    seeds_needed,
    smallest_permutation_p,
    smallest_stratified_p,
    stratified_exact_p,
    stratified_floor_p,
    t_detectable,
)
from precisionlab.store import DONE

__all__ = ["ALPHA", "MEASURES", "by_variant", "reference_tests", "loss_tests", "paired_loss_test", "with_loss_tests",
           "divergence_strata", "family_floors", "detectability"]

ALPHA = 0.05  # a verdict other than "no difference detected" needs a Holm-adjusted p below this


def by_variant(table: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """`by_variant_estimates` with the tests against the reference, verdict and reason
    (`reference_tests`; the module docstring)."""
    return reference_tests(by_variant_estimates(table, runs), runs)[0]


def with_loss_tests(table: pd.DataFrame, losses: pd.DataFrame) -> pd.DataFrame:
    """`by_lr`'s table with each variant's loss tests at that LR (`reference_tests`' second table):
    per measure (final_loss, min_loss) the difference from the reference, its interval and kind,
    and the Holm-adjusted p; NaN for the reference and where nothing was tested."""
    out = table.copy()
    for measure in MEASURES:
        mine = losses[losses.measure == measure].set_index(["variant", "lr"])
        keys = list(zip(out.variant, out.lr))
        for column, source in (("diff", "diff"), ("diff_low", "low"), ("diff_high", "high"),
                               ("diff_interval", "kind"), ("holm", "p_holm")):
            name = f"p_{measure}_holm" if column == "holm" else f"{measure}_{column}"
            values = mine[source].reindex(keys).to_numpy() if len(mine) else [math.nan] * len(out)
            out[name] = ["" if column == "diff_interval" and not isinstance(v, str) else v for v in values]
    return out


def reference_tests(out: pd.DataFrame, runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The family of tests against the reference (row 0 of `out`, by_variant's descriptive columns):
    (`out` with the tests' columns, Holm-adjusted p-values, verdict, reason and decided_by;
    `loss_tests(runs, reference)` with its Holm-adjusted p_holm). One Holm family holds every test
    of every variant: divergence, LR sensitivity and the loss tests at every LR, less the tests
    that cannot reach α with these runs (`stats.holm_reachable`: a divergence test where no run
    diverged, a 3-vs-3 divergence count, a ΔS permutation test over 3 seeds), which keep their raw p."""
    tests = pd.DataFrame([_against_reference(out, runs, i) for i in range(len(out))], columns=_TEST_COLUMNS,
                         index=out.index)
    out = pd.concat([out, tests], axis=1)
    m = len(out)
    reference = str(out.variant.iloc[0]) if m else ""
    losses = loss_tests(runs, reference)
    diverged_floor = [stratified_floor_p(divergence_strata(runs, v, reference)) if i else math.nan
                      for i, v in enumerate(out.variant)]  # given how many runs diverged at each LR
    adjusted = holm_reachable(
        np.concatenate([out.p_diverged.to_numpy(float), out.p_sensitivity.to_numpy(float), losses.p.to_numpy(float)]),
        family_floors(out.assign(p_diverged_floor=diverged_floor), losses.p_smallest))
    out["p_diverged_holm"], out["p_sensitivity_holm"] = adjusted[:m], adjusted[m:2 * m]
    out["p_diverged_floor"] = diverged_floor
    losses["p_holm"] = adjusted[2 * m:]
    summary = [_loss_summary(losses[losses.variant == v]) for v in out.variant]
    out = pd.concat([out, pd.DataFrame(summary, columns=_LOSS_SUMMARY, index=out.index)], axis=1)
    out["verdict"], out["reason"], out["decided_by"] = _verdicts(out, losses)
    return out, losses


MEASURES = {"final_loss": ("loss", "capped_loss"), "min_loss": ("best loss", "capped_min_loss")}
_LOSS_TEST_COLUMNS = ["variant", "lr", "measure", "pairs", "diff", "low", "high", "kind", "p", "p_smallest"]


def loss_tests(runs: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Each variant's final loss ℓ ("final_loss") and best loss ℓ_best ("min_loss") against the
    reference's at every LR both completed runs at, paired by seed over the seeds whose runs
    completed in both (diverged runs are the divergence test's: module docstring): pairs, the
    mean difference and its interval (stats.paired_difference), the paired t test's p
    (stats.paired_t_p: NaN below 3 pairs) and the smallest p it could reach (0: no floor)."""
    done = runs[runs.status == "completed"]
    ref = done[done.variant == reference]
    rows = []
    for (variant, lr), g in done[done.variant != reference].groupby(["variant", "lr"], sort=False):
        theirs_at_lr = ref[ref.lr == lr]
        if theirs_at_lr.empty:
            continue
        for measure, (_, column) in MEASURES.items():
            pair = paired_loss_test(g, theirs_at_lr, column)
            rows.append([variant, lr, measure, pair["n"], pair["diff"], pair["low"], pair["high"], pair["kind"],
                         pair["p_t"], math.nan if math.isnan(pair["p_t"]) else 0.0])
    return variant_sorted(pd.DataFrame(rows, columns=_LOSS_TEST_COLUMNS), "lr", "measure").reset_index(drop=True)


def paired_loss_test(runs: pd.DataFrame, reference_runs: pd.DataFrame, column: str = "capped_loss",
                     keys: tuple[str, ...] = ("seed",)) -> dict:
    """A loss test: the completed runs of `runs` against those of `reference_runs`, each `column`
    averaged per `keys` and paired over the keys both completed (diverged runs are the divergence
    test's: module docstring): stats.paired_difference's fields (n, diff, low, high, kind, p: the
    sign-flip p) and p_t, the paired t test's p (stats.paired_t_p: NaN below 3 pairs)."""
    mine, theirs = (x[x.status == "completed"].groupby(list(keys))[column].mean() for x in (runs, reference_runs))
    both = mine.index.intersection(theirs.index)
    out = paired_difference(mine[both].to_numpy(), theirs[both].to_numpy())
    out["p_t"] = paired_t_p(mine[both].to_numpy() - theirs[both].to_numpy())
    return out


_LOSS_SUMMARY = [column for m in MEASURES for column in (
    f"{m}_lr", f"{m}_diff", f"{m}_diff_low", f"{m}_diff_high", f"{m}_diff_interval", f"p_{m}", f"p_{m}_holm",
    f"{m}_tests")] + ["loss_pairs"]


def _loss_summary(tests: pd.DataFrame) -> list:
    """One variant's loss tests in _LOSS_SUMMARY's columns: per measure, the LR whose test has the
    smallest Holm-adjusted p (the decisive or the closest one) and how many LRs were tested; and
    the most seeds any of its loss tests paired."""
    values = []
    for measure in MEASURES:
        mine = tests[(tests.measure == measure) & tests.p.notna()]
        if mine.empty:
            values += [math.nan] * 4 + [""] + [math.nan] * 2 + [0]
            continue
        r = mine.assign(size=-mine["diff"].abs()).sort_values(["p_holm", "p", "size"], kind="stable").iloc[0]
        values += [r.lr, r["diff"], r.low, r.high, r.kind, r.p, r.p_holm, len(mine)]
    return values + [int(tests.pairs.max()) if len(tests) else 0]


_TEST_COLUMNS = ["p_more_diverged", "p_diverged", "paired_seeds", "sensitivity_diff", "sensitivity_diff_low",
                 "sensitivity_diff_high", "sensitivity_diff_interval", "p_sensitivity", "best_loss_diff",
                 "best_loss_diff_low", "best_loss_diff_high", "best_loss_diff_interval", "p_best_loss",
                 "p_diverged_smallest", "p_sensitivity_smallest"]


def _against_reference(table: pd.DataFrame, runs: pd.DataFrame, i: int) -> list[float]:
    """Row i of `table` against row 0, the reference: divergence over the grid (exact test stratified
    by LR, one- and two-sided), LR sensitivity paired over the seeds both finished at every LR of the
    reference's grid (none on a one-LR grid: NaN), the best-LR loss ℓ paired over seeds (each at its
    own best LR; descriptive, not in the family), and the smallest p each of the two tests could give
    with these runs (for the headline's detectability check)."""
    if i == 0:
        return [math.nan] * 6 + [""] + [math.nan] * 4 + [""] + [math.nan] * 3
    row, ref = table.iloc[i], table.iloc[0]
    strata = divergence_strata(runs, row.variant, ref.variant)
    lrs = sorted(runs[runs.variant == ref.variant].lr.unique())
    mine, theirs = seed_matrix(runs, row.variant, lrs), seed_matrix(runs, ref.variant, lrs)
    seeds = mine.index.intersection(theirs.index) if len(lrs) > 1 else mine.index[:0]  # one LR: no sensitivity
    sens = paired_sensitivity(mine.loc[seeds].to_numpy(), theirs.loc[seeds].to_numpy())
    best = {"diff": math.nan, "low": math.nan, "high": math.nan, "kind": "", "p": math.nan}
    if not (math.isnan(row.best_lr) or math.isnan(ref.best_lr)):
        at_best = [runs[(runs.variant == v) & (runs.lr == lr) & runs.status.isin(DONE)].set_index("seed").capped_loss
                   for v, lr in ((row.variant, row.best_lr), (ref.variant, ref.best_lr))]
        paired = at_best[0].index.intersection(at_best[1].index)
        if len(paired):
            best = paired_difference(at_best[0][paired].to_numpy(), at_best[1][paired].to_numpy())
    return [stratified_exact_p(strata, "greater"), stratified_exact_p(strata), sens["n"], sens["diff"], sens["low"],
            sens["high"], sens["kind"], sens["p"], best["diff"], best["low"], best["high"], best["kind"], best["p"],
            smallest_stratified_p(strata) if strata else math.nan,
            smallest_permutation_p(sens["n"]) if sens["n"] else math.nan]


def divergence_strata(runs: pd.DataFrame, variant: str, reference: str) -> list[tuple[int, int, int, int]]:
    """(diverged, finished, reference diverged, reference finished) per LR both ran: the strata of
    the divergence test (divergence rates differ far more between LRs than between formats)."""
    done = runs[runs.status.isin(DONE)]
    counts = done.assign(div=done.status == "diverged").groupby(["variant", "lr"]).div.agg(["sum", "count"])
    strata = []
    for lr in sorted(set(done[done.variant == variant].lr) & set(done[done.variant == reference].lr)):
        (k, n), (kr, nr) = counts.loc[(variant, lr)], counts.loc[(reference, lr)]
        strata.append((int(k), int(n), int(kr), int(nr)))
    return strata


def detectability(table: pd.DataFrame, alpha: float = ALPHA) -> list[str]:
    """What each test of `by_variant`'s family (every divergence, ΔS and loss test, Holm-adjusted
    together) can reach with the paired seeds or runs it has. The exact tests have a floor: a
    warning when the smallest Holm-adjusted p a divergence or ΔS test can reach is not below
    `alpha` (over the family that can reach α: stats.holm_reachable), and for ΔS the paired seeds it would need. The loss tests
    (paired t) have none: the line says how large a difference, in standard deviations of its
    per-seed differences, Holm's strictest step needs (stats.t_detectable), or that they were not
    run (fewer than 3 paired seeds)."""
    if "p_sensitivity_smallest" not in table or len(table) < 2:
        return []
    m = len(table)
    smallest, floors = _smallest_p(table), _table_floors(table)
    loss_tests = len(smallest) - 2 * m
    reach = _reach(table, alpha)
    tests = int((floors < alpha).sum())  # the family: tests that can reach alpha (stats.holm_reachable)
    lines = []
    sens = [j for j in range(m, 2 * m) if not math.isnan(reach[j])]
    if sens and min(reach[j] for j in sens) >= alpha:
        j = min(sens, key=lambda j: reach[j])
        pairs = int(table.paired_seeds.iloc[j - m])
        needed = seeds_needed(smallest, j, alpha)
        lines.append(f"With {pairs} paired seed{'s' * (pairs != 1)}, the smallest adjusted p the LR-sensitivity test "
                     f"can reach is {reach[j]:.2g} (≥ α = {alpha:g}; {_family(tests)}): it cannot detect a "
                     "difference; " + (f"{needed} paired seeds would be needed." if needed else "far more seeds are needed."))
    div = [j for j in range(m) if not math.isnan(reach[j])]
    if div and min(reach[j] for j in div) >= alpha:
        lines.append(f"With these runs per LR, the smallest adjusted p the divergence test can reach is "
                     f"{min(reach[j] for j in div):.2g} (≥ α = {alpha:g}; {_family(tests)}): it cannot detect a "
                     "difference; run more seeds.")
    pairs = int(table.loss_pairs.iloc[1:].max()) if table.loss_pairs.iloc[1:].notna().any() else 0
    if loss_tests:
        fewest = int(table.loss_pairs.iloc[1:][table.final_loss_tests.iloc[1:] > 0].min())
        lines.append(f"The loss tests (paired t, no floor on p) detect a difference once it exceeds "
                     f"{t_detectable(fewest, tests, alpha):.3g} standard deviations of its per-seed differences at "
                     f"{fewest} paired seeds and {tests} tests (Holm's strictest step; later steps need less).")
    elif pairs:
        lines.append(f"With {pairs} paired seed{'s' * (pairs != 1)} the loss is not tested: the paired t test "
                     "needs 3; run more seeds.")
    return lines


def _verdicts(table: pd.DataFrame, losses: pd.DataFrame) -> tuple[list[str], list[str], list[str]]:
    """Each variant's verdict against row 0, the numbers behind it, and the tests that decided it
    (module docstring): "less stable" / "more stable" / "mixed" when Holm-adjusted tests find the
    variant worse / better / both; "no difference detected" when none does though one could have;
    "too few seeds to test" when no test of the variant could reach an adjusted p below ALPHA."""
    if table.empty:
        return [], [], []
    ref = table.iloc[0]
    reach = _reachable(table)
    verdicts, reasons, deciders = ["reference"], [""], [""]
    for i, row in enumerate(table.iloc[1:].itertuples(), 1):
        if row.finished == 0 or ref.finished == 0:
            verdicts.append("no data"), reasons.append(""), deciders.append("")
            continue
        tests = []  # (name, adjusted p, sign of the difference: + worse, text, raw p, size)
        for measure, (name, _) in MEASURES.items():
            mine = losses[(losses.variant == row.variant) & (losses.measure == measure) & losses.p.notna()]
            for t in mine.itertuples():
                delta = interval_text(t.diff, t.low, t.high, t.kind, "+.3f")
                tests.append((name, t.p_holm, np.sign(t.diff), f"{name} at lr {t.lr:g}: Δ {delta}, Holm p = {t.p_holm:.2g}",
                              t.p, -abs(t.diff)))
        if not math.isnan(row.p_sensitivity_holm):
            delta = interval_text(row.sensitivity_diff, row.sensitivity_diff_low, row.sensitivity_diff_high,
                                  row.sensitivity_diff_interval, "+.3f")
            tests.append(("LR sensitivity", row.p_sensitivity_holm, np.sign(row.sensitivity_diff),
                          f"ΔS = {delta}, Holm p = {row.p_sensitivity_holm:.2g}", row.p_sensitivity, 0))
        if not math.isnan(row.p_diverged_holm):
            tests.append(("divergence", row.p_diverged_holm, np.sign(row.diverged_frac - ref.diverged_frac),
                          f"diverged {row.diverged}/{row.finished} vs {ref.diverged}/{ref.finished}, "
                          f"Holm p = {row.p_diverged_holm:.2g}", row.p_diverged, 0))
        decided = [t for t in tests if t[1] < ALPHA and t[2] != 0]
        worse, better = any(t[2] > 0 for t in decided), any(t[2] < 0 for t in decided)
        verdicts.append("mixed" if worse and better else "less stable" if worse else "more stable" if better
                        else "no difference detected" if reach[i] else "too few seeds to test")
        names = list(dict.fromkeys(t[0] for t in decided))
        deciders.append(", ".join(names))
        why = [t[3] for t in decided]
        for name in dict.fromkeys(t[0] for t in tests):  # each test that decided nothing: its closest case
            undecided = [t for t in tests if t[0] == name and t not in decided]
            if undecided and not (name in names and name in ("loss", "best loss")):
                closest = min(undecided, key=lambda t: (t[1], t[4], t[5]))  # as _loss_summary picks
                lrs = len(undecided)
                why.append(closest[3] + (f" (the closest of {lrs} LRs)" if lrs > 1 else ""))
        if row.paired_seeds == 0 and table.lrs.max() > 1 and math.isnan(row.p_sensitivity_holm):
            why.append("no seed finished every LR in both: LR sensitivity not compared")
        if not any(t[0] in ("loss", "best loss") for t in tests):
            pairs = int(row.loss_pairs)
            why.append("loss not tested: " + (f"at most {pairs} seed{'s' * (pairs != 1)} completed in both at an LR "
                                               "(the paired t test needs 3)" if pairs else "no seed completed in both"))
        named = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)
        reasons.append((f"by {named}: " if names else "") + "; ".join(why))
    return verdicts, reasons, deciders


def _family(tests: int) -> str:
    """How many tests Holm adjusts over: those that can reach α (stats.holm_reachable)."""
    return f"Holm over the {tests} test{'s' * (tests != 1)} that can reach α" if tests else "no test here can reach α"


def _smallest_p(table: pd.DataFrame) -> np.ndarray:
    """The smallest raw p each test of the family can reach with these runs, in the family's order:
    the divergence tests, the ΔS tests (a row each, NaN where not run), then one 0 per loss test
    (a t test has no floor)."""
    return np.concatenate([table.p_diverged_smallest.to_numpy(float), table.p_sensitivity_smallest.to_numpy(float),
                           np.zeros(_loss_test_count(table))])


def _loss_test_count(table: pd.DataFrame) -> int:
    return int(table.final_loss_tests.fillna(0).sum() + table.min_loss_tests.fillna(0).sum())


def family_floors(table: pd.DataFrame, loss_floors) -> np.ndarray:
    """The floor of each test of the family given what happened, in the family's order: the
    divergence tests (the smallest p with these runs per LR, p_diverged_smallest, bounded by how many
    runs diverged at each LR, p_diverged_floor: stats.stratified_floor_p, 1 when none did), the ΔS
    tests (p_sensitivity_smallest), then the loss tests (`loss_floors`: 0 for a t test, NaN for a
    test not run). The family Holm adjusts over is the tests whose floor is below α
    (stats.holm_reachable): `reference_tests` adjusts with these floors, `detectability` and the
    verdicts' "too few seeds to test" read them."""
    diverged = table.p_diverged_smallest.to_numpy(float)
    if "p_diverged_floor" in table:
        diverged = np.fmax(diverged, table.p_diverged_floor.to_numpy(float))
    return np.concatenate([diverged, table.p_sensitivity_smallest.to_numpy(float), np.asarray(loss_floors, float)])


def _table_floors(table: pd.DataFrame) -> np.ndarray:
    """`family_floors` of `reference_tests`' table, whose loss tests are counted, not listed."""
    return family_floors(table, np.zeros(_loss_test_count(table)))


def _reach(table: pd.DataFrame, alpha: float) -> np.ndarray:
    """The smallest adjusted p each test of the family can reach with these runs (`_smallest_p`'s
    order): every test at its floor, Holm over those that can reach alpha (stats.holm_reachable;
    Holm is monotone in every p, so no outcome adjusts lower)."""
    floors = _table_floors(table)
    return holm_reachable(floors, floors, alpha)


def _reachable(table: pd.DataFrame, alpha: float = ALPHA) -> list[bool]:
    """Per variant: can any of its tests reach a Holm-adjusted p below alpha with these runs (`_reach`)?"""
    m, reach = len(table), _reach(table, alpha)
    loss_tests = table.final_loss_tests.fillna(0) + table.min_loss_tests.fillna(0)
    return [bool(loss_tests.iat[i] > 0 or reach[i] < alpha or reach[m + i] < alpha) for i in range(m)]
