"""The master-weights study: bf16 weights rounded to nearest even or stochastically, against fp32 master weights.

    precisionlab sweep sweep=master_weights --jobs 1
    python scripts/master_weights_study.py [--store results/precisionlab.db] [--sweep master_weights]
                                           [--plot docs/master_weights.png]

Prints a Markdown table: per variant the mean final validation loss over seeds (95% interval), its
paired difference from fp32 master weights over the seeds (same seed: same initial weights and batch
order; 95% interval, the paired t test's p (the report's loss test) raw and Holm-adjusted over the study's three tests: RNE and SR
against fp32 master weights, SR against RNE), and the share of nearest-even's gap that stochastic
rounding recovers, 1 - Δ(SR) / Δ(RNE). The intervals are the report's (precisionlab.analysis.stats;
the seeds' range, printed as a range, with 2 seeds). Writes a figure: validation loss against step
(mean over seeds, band min to max) and the paired difference from fp32 master weights per
evaluation (mean, 95% band).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from matplotlib.figure import Figure

from precisionlab.analysis.drawing import DPI, FACET_H, FACET_W
from precisionlab.analysis.stats import holm, interval_text, mean_interval, paired_difference, paired_t_p
from precisionlab.store import DEFAULT_STORE_PATH, ResultsStore, StoreError

VARIANTS = {  # (optim.master_format, optim.master_rounding) -> label, colour, line style
    ("fp32", "nearest_even"): ("fp32 master", "black", "--"),  # dashed: bf16 SR lies on it
    ("bf16", "nearest_even"): ("bf16 RNE", "tab:red", "-"),
    ("bf16", "stochastic"): ("bf16 SR", "tab:blue", "-"),
}


def load(store: ResultsStore, sweep: str):
    """Completed runs labelled by variant, and their validation curves (step x seed per variant)."""
    runs = store.runs(sweep=sweep, status="completed")
    keys = [(c["optim"].get("master_format", "fp32"), c["optim"].get("master_rounding", "nearest_even"))
            for c in runs.config]
    runs["variant"] = [VARIANTS.get(k, (f"{k[0]} {k[1]}",))[0] for k in keys]
    val = store.metrics(list(runs.run_id), split="val").merge(runs[["run_id", "variant", "seed"]], on="run_id")
    curves = {v: g.pivot(index="step", columns="seed", values="loss").astype(float) for v, g in val.groupby("variant")}
    return runs, curves


def _paired(final: dict, label: str, reference: str) -> dict:
    x, ref = final[label], final[reference]
    seeds = x.index.intersection(ref.index)
    d = paired_difference(x[seeds].to_numpy(), ref[seeds].to_numpy())
    # the report's loss test: the paired t test on the interval's scale (the sign-flip test's floor,
    # 2/2^6 = 0.031 before Holm, kept 6 seeds from ever reaching 5% over three tests)
    return {**d, "p": paired_t_p(x[seeds].to_numpy() - ref[seeds].to_numpy())}


def table(runs) -> list[str]:
    """The study's table; its tests (each bf16 variant against fp32 master weights, SR against RNE)
    are one family, Holm-adjusted together."""
    final = {v: g.set_index("seed").final_val_loss.astype(float) for v, g in runs.groupby("variant")}
    tests = {label: _paired(final, label, "fp32 master") for label in ("bf16 RNE", "bf16 SR") if label in final}
    if {"bf16 RNE", "bf16 SR"} <= set(final):
        tests["SR - RNE"] = _paired(final, "bf16 SR", "bf16 RNE")
    adjusted = dict(zip(tests, holm([d["p"] for d in tests.values()])))
    lines = ["| variant | runs | final val loss [95% CI] | Δ vs fp32 master [95% CI] | p (Δ) | Holm p (Δ) |",
             "|---|---|---|---|---|---|"]
    for label, *_ in VARIANTS.values():
        if label not in final:
            continue
        mean, low, high, kind = mean_interval(final[label].to_numpy())
        d = tests.get(label)
        delta = "—" if d is None else interval_text(d["diff"], d["low"], d["high"], d["kind"], "+.4f")
        p = "— | —" if d is None else f"{d['p']:.2g} | {adjusted[label]:.2g}"
        lines.append(f"| {label} | {len(final[label])} | {interval_text(mean, low, high, kind, '.4f')} | {delta} | {p} |")
    if "SR - RNE" in tests:
        d = tests["SR - RNE"]
        recovered = 1 - tests["bf16 SR"]["diff"] / tests["bf16 RNE"]["diff"]
        lines += ["", f"bf16 SR - bf16 RNE: {interval_text(d['diff'], d['low'], d['high'], d['kind'], '+.4f')}, "
                  f"p = {d['p']:.2g} (Holm {adjusted['SR - RNE']:.2g}) over {d['n']} seeds; stochastic rounding "
                  f"recovers {recovered:.0%} of nearest-even's gap"]
    return lines


def figure(curves) -> Figure:
    fig = Figure(figsize=(2 * FACET_W, FACET_H), layout="constrained")
    loss_ax, diff_ax = fig.subplots(1, 2)
    ref = curves["fp32 master"]
    for label, colour, style in VARIANTS.values():
        if label not in curves:
            continue
        c = curves[label]
        loss_ax.plot(c.index, c.mean(axis=1), color=colour, ls=style, lw=1.5, label=label, zorder=3 if style == "--" else 2)
        loss_ax.fill_between(c.index, c.min(axis=1), c.max(axis=1), color=colour, alpha=0.15, lw=0)
        d = c - ref[c.columns]  # paired by seed
        band = np.array([mean_interval(row.dropna().to_numpy())[:3] for _, row in d.iterrows()], dtype=float)
        diff_ax.plot(d.index, band[:, 0], color=colour, ls=style, lw=1.5)
        diff_ax.fill_between(d.index, band[:, 1], band[:, 2], color=colour, alpha=0.2, lw=0)
    loss_ax.set(xlabel="step", ylabel="val loss", title="mean over seeds, band: min-max")
    diff_ax.set(xlabel="step", ylabel="Δ val loss vs fp32 master", title="paired by seed, band: 95% interval (range for 2 seeds)")
    for ax in (loss_ax, diff_ax):
        ax.grid(alpha=0.3)
        ax.title.set_fontsize(9)
    loss_ax.legend(frameon=False, fontsize=8)
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=DEFAULT_STORE_PATH, help="store path or URL")
    parser.add_argument("--sweep", default="master_weights")
    parser.add_argument("--plot", default="docs/master_weights.png", help="where the figure goes ('' for none)")
    args = parser.parse_args()
    try:  # read only, never created: a mistyped --store is an error, not a new empty file
        store = ResultsStore(args.store, read_only=True, create=False)
        runs, curves = load(store, store.sweep_name(args.sweep))
    except (StoreError, OSError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        sys.exit(2)
    if "fp32 master" not in curves:
        print(f"error: sweep {args.sweep!r} has no completed run with fp32 master weights to compare with", file=sys.stderr)
        sys.exit(2)
    print("\n".join(table(runs)))
    if args.plot:
        figure(curves).savefig(args.plot, dpi=DPI, bbox_inches="tight")
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
