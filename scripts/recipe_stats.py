"""Each recipe of a stored sweep against a reference, per learning rate, with intervals.

    python scripts/recipe_stats.py --sweep fp8_recipes [--store results/precisionlab.db] [--reference bf16]

Prints a Markdown table (precisionlab.analysis.stats.recipe_comparison): divergences with their
exact 95% interval and Fisher's one-sided p against the reference; the mean final validation loss
of completed runs with its 95% interval; the paired difference from the reference over the seeds
where both completed (same seed: same initial weights and batch order), with its 95% interval and
the exact sign-flip p-value, raw and Holm-adjusted over every test in the table (a recipe x LR grid
makes dozens of comparisons); and a verdict worded by the adjusted p-values at the 5% level. The
intervals are the report's (precisionlab.analysis.stats): with 2 seeds the seeds' range, printed
as a range; the last line says when the family's size leaves no test able to reach p < 0.05.
"""

from __future__ import annotations

import argparse
import math
import sys

from precisionlab.analysis.labels import display_label, format_order, label_runs
from precisionlab.analysis.stats import fisher_greater, interval_text, holm, recipe_comparison, smallest_permutation_p
from precisionlab.store import DEFAULT_STORE_PATH, ResultsStore, StoreError


def verdict(row) -> str:
    """Worded by the Holm-adjusted p-values (the family: every test in the table)."""
    if math.isnan(row.p_diff) and math.isnan(row.p_more_diverged):
        return "reference"
    parts = []
    if row.holm_diverged < 0.05:
        parts.append(f"diverges more (Holm p = {row.holm_diverged:.3f})")
    if row.pairs and row.holm_diff < 0.05:
        parts.append(f"{'higher' if row['diff'] > 0 else 'lower'} loss (Holm p = {row.holm_diff:.3f})")
    return "; ".join(parts) or "no difference detected"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=DEFAULT_STORE_PATH, help="store path or URL")
    parser.add_argument("--sweep", default=None, help="sweep name (default: the latest)")
    parser.add_argument("--reference", default="bf16", help="the variant label to compare with")
    args = parser.parse_args()
    try:  # read only, never created: a mistyped --store is an error, not a new empty file
        store = ResultsStore(args.store, read_only=True, create=False)
        runs = label_runs(store.runs(sweep=store.sweep_name(args.sweep)))
    except (StoreError, OSError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
    by_name = {display_label(v): v for v in set(runs.variant)}
    args.reference = by_name.get(args.reference, args.reference)  # a preset's name stands for its label
    if args.reference not in set(runs.variant):
        print(f"error: --reference {args.reference!r} is not a variant of this sweep; accepted: "
              f"{', '.join(sorted(by_name))}", file=sys.stderr)
        sys.exit(2)
    table = recipe_comparison(runs, args.reference)
    adjusted = holm(list(table.p_diff) + list(table.p_more_diverged))
    table["holm_diff"], table["holm_diverged"] = adjusted[:len(table)], adjusted[len(table):]
    table = table.iloc[sorted(range(len(table)), key=lambda i: (table.lr.iat[i], format_order(table.variant.iat[i])))]
    print("| variant | lr | diverged [95% CI] | final val loss [95% CI] | Δ vs " + display_label(args.reference)
          + " [95% CI], pairs | p (Δ) | Holm p (Δ) | verdict |")
    print("|---|---|---|---|---|---|---|---|")
    for _, r in table.iterrows():
        div = f"{r.diverged}/{r.runs} [{r.diverged_low:.2f}, {r.diverged_high:.2f}]"
        loss = "—" if math.isnan(r.loss) else interval_text(r.loss, r.loss_low, r.loss_high, r.loss_interval)
        diff = "—" if not r.pairs or r.variant == args.reference else \
            f"{interval_text(r['diff'], r.diff_low, r.diff_high, r.diff_interval, '+.3f')}, {r.pairs}"
        p = "—" if math.isnan(r.p_diff) else f"{r.p_diff:.3f}"
        adjusted = "—" if math.isnan(r.holm_diff) else f"{r.holm_diff:.3f}"
        print(f"| {display_label(r.variant)} | {r.lr:g} | {div} | {loss} | {diff} | {p} | {adjusted} | {verdict(r)} |")
    pairs = table.pairs[table.p_diff.notna()]
    if len(pairs):  # the loss tests' best case: every test at its smallest p (Holm is monotone in each)
        ref_runs = table[table.variant == args.reference].set_index("lr").runs
        smallest = [smallest_permutation_p(int(n)) if n else math.nan for n in pairs]
        smallest += [fisher_greater(r.runs, r.runs, 0, int(ref_runs.get(r.lr, 0)))  # all diverged vs none
                     for r in table[table.p_more_diverged.notna()].itertuples()]
        reach = holm(smallest)  # this script's family is plain Holm (line above the table)
        best = min(reach[j] for j in range(len(pairs)) if not math.isnan(smallest[j]))
        print(f"\nsmallest Holm-adjusted p a loss difference can reach here ({int(pairs.max())} pairs, "
              f"{int(table.p_diff.notna().sum() + table.p_more_diverged.notna().sum())} tests): {best:.2g}"
              + (" — no loss difference can be detected at 5%" if best >= 0.05 else ""))


if __name__ == "__main__":
    main()
