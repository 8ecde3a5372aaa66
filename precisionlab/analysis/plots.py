"""The report's stability figures, drawn from a `precisionlab.analysis.report.Report` with matplotlib,
and `figures(report)`: every figure of the report by file name (the signals watched during training
are drawn by `analysis.signal_plots`); `png(fig)` turns one into bytes (`analysis.drawing`).

Figures are built with `matplotlib.figure.Figure` (no pyplot): no global state,
no display needed, safe in any process.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from precisionlab.analysis.drawing import FACET_H, FACET_W, draw_loss, loss_limits, lr_colours, lr_legend, png
from precisionlab.analysis.labels import bits_per_element, display_label, format_family
from precisionlab.analysis.report import Report
from precisionlab.analysis.signal_plots import (
    diagnostics_sites,
    diagnostics_trends,
    early_warning,
    early_warning_roc,
    sharpness_curves,
)
from precisionlab.analysis.stats import CI, RANGE

__all__ = ["figures", "png", "loss_curves", "final_loss_heatmap", "loss_vs_lr", "stability_vs_bits", "dose_response"]

COLUMNS = 4                  # facets per row in the loss-curve grid


def loss_curves(report: Report) -> Figure:
    """Train loss against step, one facet per variant; colour = LR, one thin line per seed, x = divergence;
    a branch's line starts at its branch point (circled), its parent's curve up to there faint."""
    variants = list(report.by_variant.variant)
    curves = report.curves[report.curves.split == "train"]
    colours = lr_colours(report.runs.lr)
    ncols = min(len(variants), COLUMNS)
    nrows = math.ceil(len(variants) / ncols)
    fig = Figure(figsize=(FACET_W * ncols, FACET_H * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    ylim = loss_limits(report, curves)
    for ax, variant in zip(axes.flat, variants):
        draw_loss(ax, report, variant, curves, colours, ylim)
    for ax in axes.flat[len(variants):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("train loss")
    for ax in axes[-1, :]:
        ax.set_xlabel("step")
    fig.get_layout_engine().set(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    lr_legend(fig, colours, diverged=(report.runs.status == "diverged").any(), branches=not report.parent_curves.empty)
    return fig


def final_loss_heatmap(report: Report) -> Figure:
    """Mean final validation loss, variant x LR; cells name their divergences, all-diverged cells are hatched."""
    table = report.by_lr
    variants = list(report.by_variant.variant)
    lrs = sorted(table.lr.unique())
    values = np.full((len(variants), len(lrs)), np.nan)
    for row in table.itertuples():
        values[variants.index(row.variant), lrs.index(row.lr)] = row.final_loss_mean
    fig = Figure(figsize=(1.3 + 1.25 * len(lrs), 0.9 + 0.55 * len(variants)), layout="constrained")
    ax = fig.subplots()
    cmap = colormaps["viridis_r"].with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, aspect="auto")
    for row in table.itertuples():
        i, j = variants.index(row.variant), lrs.index(row.lr)
        lines = []
        if not math.isnan(row.final_loss_mean):
            lines.append(f"{row.final_loss_mean:.3f}")
            if not math.isnan(row.final_loss_std):
                lines.append(f"±{row.final_loss_std:.3f}")
        else:
            ax.add_patch(_hatch(j, i))
        if row.diverged:
            lines.append(f"div {row.diverged}/{row.finished}")
        elif row.finished == 0:
            lines.append("no runs")
        shade = np.mean(to_rgb(cmap(image.norm(row.final_loss_mean)))) if not math.isnan(row.final_loss_mean) else 0.9
        ax.text(j, i, "\n".join(lines), ha="center", va="center", fontsize=8,
                color="black" if shade > 0.5 else "white")
    ax.set_xticks(range(len(lrs)), [f"{lr:.3g}" for lr in lrs])
    ax.set_yticks(range(len(variants)), [display_label(v) for v in variants])
    ax.set_xlabel("learning rate")
    ax.set_title("final validation loss (mean ± std over completed seeds)", fontsize=10)
    fig.colorbar(image, ax=ax, label="final val loss", shrink=0.9)
    return fig


def _hatch(x: int, y: int) -> Rectangle:
    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, hatch="///", edgecolor="#999999", lw=0)


def stability_vs_bits(*reports: Report) -> Figure | None:
    """Diverged fraction and LR sensitivity against bits per element (a block format's scales
    included), one line per family: element formats by exponent width, block formats by scale
    and block (and per sweep when given several); variants of more than 16 bits (fp32, tf32)
    are dashed reference lines."""
    tables = []
    for report in reports:
        table = report.by_variant.assign(bits=report.by_variant.variant.map(bits_per_element))
        prefix = f"{report.sweep}: " if len(reports) > 1 else ""
        tables.append(table[table.bits.notna()].assign(sweep=prefix))
    table = pd.concat(tables, ignore_index=True)
    if table.empty:
        return None
    fig = Figure(figsize=(9.5, 3.4), layout="constrained")
    axes = fig.subplots(1, 2)
    wide, narrow = table[table.bits > 16], table[table.bits <= 16]
    series = narrow.assign(family=narrow.variant.map(format_family),
                           extra=[display_label(v).split(" ", 1)[-1] if " [" in v else "" for v in narrow.variant])
    for ax, column, label in ((axes[0], "diverged_frac", "diverged runs (%)"),
                              (axes[1], "lr_sensitivity", "LR sensitivity")):
        scale = 100.0 if column == "diverged_frac" else 1.0
        low, high = ("diverged_low", "diverged_high") if column == "diverged_frac" else \
            ("lr_sensitivity_low", "lr_sensitivity_high")
        for k, ((sweep, family, extra), group) in enumerate(series.groupby(["sweep", "family", "extra"], sort=False)):
            group = group.sort_values("bits")
            kind = [CI] * len(group) if column == "diverged_frac" else list(group.lr_sensitivity_interval)
            _interval_bars(ax, group.bits, group[column] * scale, group[low] * scale, group[high] * scale, kind,
                           marker="o", label=f"{sweep}{family} {extra}".strip())
            for row in group.itertuples():  # labels of later series sit lower, so equal values stay legible
                name = display_label(row.variant)
                ax.annotate(name if name != row.variant else row.variant.split(" ")[0], (row.bits, getattr(row, column) * scale),
                            fontsize=7, textcoords="offset points", xytext=(4, 4 - 9 * (k % 4)))
        for i, row in enumerate(wide.itertuples()):
            ax.axhline(getattr(row, column) * scale, ls="--", lw=1, color=f"C{(i + 5) % 10}",
                       label=f"{row.sweep}{row.variant}")
        ax.set_xlabel("bits per element (scales included)")
        ax.set_ylabel(label + " [95% interval; dotted: range]")
        ax.set_ylim(bottom=0 if column == "lr_sensitivity" else -4)  # from 0: noise must not read as a trend
        ax.grid(alpha=0.3)
    axes[0].set_ylim(-4, 104)
    axes[0].legend(fontsize=8)
    fig.suptitle("stability against bits per element", fontsize=10)
    return fig


def dose_response(report: Report) -> Figure | None:
    """Per axis (analysis.dose) a column: the final validation loss (top) and the diverged share
    (bottom) against the axis' bits, one line per LR with interval bars; the reference's loss and
    the band up to it + δ per LR; ☆ each LR's frontier, the grey line the frontier at every LR."""
    dose = report.dose
    if dose is None or dose.points.empty:
        return None
    pts, table = dose.points, dose.frontiers
    names = list(dict.fromkeys(pts.axis))
    colours = lr_colours(pts.lr)
    fig = Figure(figsize=(FACET_W * 1.25 * len(names), 2 * FACET_H + 0.9), layout="constrained")
    axes = fig.subplots(2, len(names), squeeze=False, sharex="col", height_ratios=[2, 1])
    for j, name in enumerate(names):
        top, bottom = axes[0, j], axes[1, j]
        mine = pts[pts.axis == name]
        span = float(mine.x.max() - mine.x.min()) or 1.0
        style = {"ls": "none"} if mine.kind.iloc[0] == "bits" else {}  # recipes of equal bits: no line between them
        for i, (lr, g) in enumerate(mine.groupby("lr")):
            g, colour = g.sort_values("x"), colours[float(lr)]
            g = g.assign(shown=g.x + (i - (len(colours) - 1) / 2) * 0.012 * span)  # LRs side by side: bars stay apart
            ref = g[g.decision == "reference"]
            if len(ref) and not math.isnan(ref.loss_mean.iloc[0]):
                level = float(ref.loss_mean.iloc[0])
                top.axhspan(level, level + dose.margin, color=colour, alpha=0.12, lw=0)
                top.axhline(level, color=colour, lw=0.8, ls="--")
            done = g[g.loss_mean.notna()]
            _interval_bars(top, done.shown, done.loss_mean, done.loss_low, done.loss_high, done.loss_interval,
                           marker="o", color=colour, label=f"lr {lr:.3g}", **style)
            lost = g[g.loss_mean.isna() & (g.diverged > 0)]  # no completed run: an x at the top of the panel
            top.plot(lost.shown, [0.97] * len(lost), marker="x", color=colour, mew=1.6, markersize=8, lw=0,
                     transform=top.get_xaxis_transform())
            front = table[(table.axis == name) & (table.lr == lr)]
            if len(front) and not math.isnan(front.frontier_x.iloc[0]):
                at = done[done.x == front.frontier_x.iloc[0]]
                top.plot(at.shown, at.loss_mean, marker="*", markersize=14, mfc="none", mec=colour, mew=1.4, lw=0)
            _interval_bars(bottom, g.shown, g.diverged / g.finished * 100, g.diverged_low * 100, g.diverged_high * 100,
                           [CI] * len(g), marker="o", color=colour, **style)
        overall = table[(table.axis == name) & table.lr.isna()]
        if len(overall) and not math.isnan(overall.frontier_x.iloc[0]):
            for ax in (top, bottom):
                ax.axvline(overall.frontier_x.iloc[0], color="grey", lw=1.2, ls=":")
        widths = mine.drop_duplicates("variant").sort_values("x")
        if mine.kind.iloc[0] == "bits":  # ticks name the formats: several can share a bit count
            ticks = widths.groupby("x").variant.agg(lambda vs: "\n".join(display_label(v) for v in vs))
            bottom.set_xticks(list(ticks.index), [f"{x:g}\n{names}" for x, names in ticks.items()], fontsize=7)
            bottom.set_xlabel("bits per element (scales included)")
        else:
            ticks = widths.groupby("x").variant.first()
            bottom.set_xticks(list(ticks.index), [display_label(v) for v in ticks], rotation=45, fontsize=7)
            bottom.set_xlabel(f"{mine.kind.iloc[0]} bits")
        top.set_title(name, fontsize=10)
        top.set_ylabel("final val loss [95% interval]")
        bottom.set_ylabel("diverged runs (%)")
        bottom.set_ylim(-4, 104)
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=c, marker="o", lw=1.5, label=f"lr {lr:.3g}") for lr, c in colours.items()]
    handles += [Rectangle((0, 0), 1, 1, color="grey", alpha=0.25, lw=0, label=f"reference to + δ ({dose.margin:g})"),
                Line2D([], [], color="black", marker="*", mfc="none", markersize=11, lw=0, label="frontier at this LR"),
                Line2D([], [], color="black", marker="x", mew=1.6, lw=0, label="every run diverged"),
                Line2D([], [], color="grey", ls=":", lw=1.2, label="frontier at every LR")]
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 6), frameon=False, fontsize=8,
               bbox_to_anchor=(0.5, 1.0))
    fig.get_layout_engine().set(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    return fig


def _error_bars(value: pd.Series, low: pd.Series, high: pd.Series) -> np.ndarray:
    """(2, n) distances from each value down to `low` and up to `high`; 0 where the interval is missing."""
    value, low, high = (np.asarray(c, dtype=float) for c in (value, low, high))
    return np.nan_to_num(np.stack([value - low, high - value]).clip(min=0))


def _interval_bars(ax, x, y, low, high, kind, **line) -> None:
    """A line with error bars: capped solid bars for 95% CIs, dotted uncapped bars for the seeds'
    range (2 seeds, no level claimed), none for a single value (`stats` interval kinds)."""
    y, low, high = (np.asarray(c, dtype=float) for c in (y, low, high))
    kind = np.asarray(kind, dtype=object)
    ci, spread = kind == CI, kind == RANGE
    bars = _error_bars(y, np.where(ci, low, np.nan), np.where(ci, high, np.nan))
    drawn = ax.errorbar(x, y, yerr=bars, capsize=3, **line)
    if spread.any():
        ranges = ax.errorbar(np.asarray(x)[spread], y[spread], yerr=_error_bars(y, low, high)[:, spread], fmt="none",
                             capsize=0, ecolor=drawn.lines[0].get_color())
        for collection in ranges.lines[2]:
            collection.set_linestyle(":")


def loss_vs_lr(report: Report) -> Figure:
    """ℓ(η), the mean capped final loss over seeds, against the learning rate, one line per variant,
    with the 95% interval over seeds as error bars (the seeds' range, dotted, for 2 seeds; a diverged
    run counts as ℓ₀)."""
    table = report.by_lr[report.by_lr.finished > 0]
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.subplots()
    for variant in report.by_variant.variant:
        rows = table[table.variant == variant].sort_values("lr")
        if len(rows):
            _interval_bars(ax, rows.lr, rows.lr_loss, rows.lr_loss_low, rows.lr_loss_high, rows.lr_loss_interval,
                           marker="o", label=display_label(variant))
    loss0 = report.runs.loss0.astype(float)
    if loss0.notna().any():
        ax.axhline(loss0.mean(), ls=":", color="grey", lw=1, label="ℓ₀ = ln V (uniform prediction)")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("ℓ(η): final val loss, capped [95% interval; dotted: range]")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("loss against learning rate (mean over seeds; a diverged run counts as ℓ₀)", fontsize=10)
    return fig


def figures(report: Report) -> dict[str, Figure]:
    """Every figure the report has data for, by file name: none of a sweep whose runs have
    not logged a step yet, loss curves only while no run has finished."""
    out = {}
    if (report.curves.split == "train").any():
        out["loss_curves.png"] = loss_curves(report)
    if report.by_lr.finished.sum():
        out["final_loss_heatmap.png"] = final_loss_heatmap(report)
        out["loss_vs_lr.png"] = loss_vs_lr(report)
        bits = stability_vs_bits(report)
        if bits is not None:
            out["stability_vs_bits.png"] = bits
        dose = dose_response(report)
        if dose is not None:
            out["dose_response.png"] = dose
    if len(report.warning_aligned):
        out["early_warning.png"] = early_warning(report)
    if len(report.warning_roc):
        out["early_warning_roc.png"] = early_warning_roc(report)
    if not report.sharpness.empty:
        for metric, group in report.sharpness.groupby("metric"):
            settings = sorted(group.params.unique())  # one figure per parameter setting, numbered if several
            for i, params in enumerate(settings, 1):
                name = f"sharpness_{metric}.png" if len(settings) == 1 else f"sharpness_{metric}_{i}.png"
                out[name] = sharpness_curves(report, metric, params)
    if not report.diagnostics.empty:
        trends = diagnostics_trends(report)
        if trends is not None:
            out["diagnostics_trends.png"] = trends
        for i, variant in enumerate(report.by_variant.variant, 1):  # numbered in the tables' order
            sites = diagnostics_sites(report, variant)
            if sites is not None:
                out[f"diagnostics_sites_{i}.png"] = sites
    return out

