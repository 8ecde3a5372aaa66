"""The report's figures, drawn from a `precisionlab.analysis.report.Report` with matplotlib.

Figures are built with `matplotlib.figure.Figure` (no pyplot): no global state,
no display needed, safe in any process. `figures(report)` returns them by file
name; `png(fig)` turns one into bytes.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from precisionlab.analysis.diagnostics import OPERAND_ORDER, by_step, site_means, worst_sites
from precisionlab.analysis.labels import bits_per_element, display_label, format_family
from precisionlab.analysis.report import Report
from precisionlab.analysis.stats import CI, RANGE

__all__ = ["figures", "png", "loss_curves", "final_loss_heatmap", "loss_vs_lr", "stability_vs_bits", "dose_response",
           "sharpness_curves",
           "early_warning", "early_warning_roc", "diagnostics_sites", "diagnostics_trends"]

DPI = 110
FACET_W, FACET_H = 3.4, 2.6  # inches per facet
COLUMNS = 4                  # facets per row in the loss-curve grid


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def _lr_colours(lrs) -> dict[float, tuple]:
    """One viridis colour per learning rate, by rank: small LRs dark, large LRs yellow."""
    lrs = sorted(set(float(lr) for lr in lrs if not pd.isna(lr)))
    cmap = colormaps["viridis"]
    return {lr: cmap(0.85 * i / max(len(lrs) - 1, 1)) for i, lr in enumerate(lrs)}


def _lr_legend(fig: Figure, colours: dict[float, tuple], diverged: bool, branches: bool = False) -> None:
    handles = [Line2D([], [], color=c, lw=2, label=f"lr {lr:.3g}") for lr, c in colours.items()]
    if diverged:
        handles.append(Line2D([], [], color="black", marker="x", lw=0, markersize=7, label="diverged"))
    if branches:
        handles.append(Line2D([], [], color="black", marker="o", mfc="none", lw=0.8, alpha=0.6,
                              label="branch point (parent faint)"))
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 8), frameon=False,
               bbox_to_anchor=(0.5, 1.0))


def _loss_limits(report: Report, curves: pd.DataFrame) -> tuple[float, float]:
    """From just below the lowest loss to just above the highest initial loss: divergences are clipped."""
    loss = curves.loss.astype(float)  # an empty column comes back from SQLite as objects
    finite = loss[np.isfinite(loss)]
    starts = pd.concat([report.runs.initial_loss.astype(float), report.runs.loss0.astype(float)])
    top = np.nanmax(starts) if starts.notna().any() else finite.max()
    low = finite.min() if len(finite) else 0.0
    pad = 0.05 * (top - low if top > low else 1.0)
    return low - pad, top + 2 * pad


def _draw_loss(ax, report: Report, variant: str, curves: pd.DataFrame, colours, ylim) -> None:
    runs = report.runs[report.runs.variant == variant].sort_values(["lr", "seed"])
    for run in runs.itertuples():
        curve = curves[curves.run_id == run.run_id]
        colour = colours.get(float(run.lr), "grey")
        lead = report.parent_curves[report.parent_curves.run_id == run.run_id]  # a branch's parent, up to the branch step
        if len(lead):
            ax.plot(lead.step, lead.loss.clip(upper=ylim[1]), color=colour, lw=0.8, alpha=0.25)
            ax.plot(lead.step.iloc[-1:], lead.loss.iloc[-1:].clip(upper=ylim[1]), marker="o", mfc="none", color=colour,
                    markersize=5, zorder=4)
            curve = pd.concat([lead.iloc[-1:], curve])  # the branch's line leaves from its branch point
        ax.plot(curve.step, curve.loss.clip(upper=ylim[1]), color=colour, lw=0.8, alpha=0.8)
        if run.status == "diverged" and len(curve):
            last = curve.loss.iloc[-1]
            y = ylim[1] if not np.isfinite(last) or last > ylim[1] else last
            ax.plot([curve.step.iloc[-1]], [y], marker="x", color="black", markersize=7, mew=1.6, zorder=5)
            ax.plot([curve.step.iloc[-1]], [y], marker="x", color=colour, markersize=5, mew=1.0, zorder=6)
    ax.set_ylim(*ylim)
    ax.set_title(display_label(variant), fontsize=10)
    ax.grid(alpha=0.3)


def loss_curves(report: Report) -> Figure:
    """Train loss against step, one facet per variant; colour = LR, one thin line per seed, x = divergence;
    a branch's line starts at its branch point (circled), its parent's curve up to there faint."""
    variants = list(report.by_variant.variant)
    curves = report.curves[report.curves.split == "train"]
    colours = _lr_colours(report.runs.lr)
    ncols = min(len(variants), COLUMNS)
    nrows = math.ceil(len(variants) / ncols)
    fig = Figure(figsize=(FACET_W * ncols, FACET_H * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    ylim = _loss_limits(report, curves)
    for ax, variant in zip(axes.flat, variants):
        _draw_loss(ax, report, variant, curves, colours, ylim)
    for ax in axes.flat[len(variants):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("train loss")
    for ax in axes[-1, :]:
        ax.set_xlabel("step")
    fig.get_layout_engine().set(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    _lr_legend(fig, colours, diverged=(report.runs.status == "diverged").any(), branches=not report.parent_curves.empty)
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
    colours = _lr_colours(pts.lr)
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


def early_warning(report: Report) -> Figure:
    """Each signal of the diverged runs against steps before their divergence, relative to their
    time-matched threshold (warning.aligned): one panel per signal, one line per run."""
    table = report.warning_aligned
    names = sorted(table.signal.unique())
    cols = min(len(names), 3)
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(FACET_W * cols, FACET_H * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    colours = _lr_colours(table.lr)
    for ax, name in zip(axes, names):
        for (run_id, lr), run in table[table.signal == name].groupby(["run_id", "lr"]):
            run = run.sort_values("steps_before")
            ax.plot(run.steps_before, run.ratio, lw=0.9, color=colours[float(lr)], marker="." if len(run) < 30 else None)
        ax.axhline(1.0, color="black", ls="--", lw=1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("steps before divergence")
        ax.set_ylabel("value / threshold")
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.get_layout_engine().set(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    _lr_legend(fig, colours, diverged=False)
    return fig


def early_warning_roc(report: Report) -> Figure:
    """One ROC panel per signal (warning.roc), one line per lead, the AUC and its interval in the
    legend (warning.windows); the diagonal is chance."""
    curves, auc = report.warning_roc, report.warning_windows.set_index(["signal", "lead"])
    names = sorted(curves.signal.unique())
    cols = min(len(names), 3)
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(FACET_H * 1.15 * cols, FACET_H * 1.15 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, name in zip(axes, names):
        for lead, curve in curves[curves.signal == name].groupby("lead", sort=True):
            a = auc.loc[(name, lead)]
            ax.plot(curve.false_alarm_rate, curve.hit_rate, lw=1.2,
                    label=f"≥ {lead} ahead: AUC {a.auc:.2f} [{a.auc_low:.2f}, {a.auc_high:.2f}], {int(a.diverged)} div.")
        ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="false-alarm rate (completed runs)", ylabel="hit rate (diverged runs)")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=6, loc="lower right")
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    return fig


def sharpness_curves(report: Report, metric: str, params: str) -> Figure:
    """Per variant: train loss (top) and the sharpness metric (bottom) against step; colour = LR, line per seed."""
    variants = list(report.by_variant.variant)
    curves = report.curves[report.curves.split == "train"]
    values = report.sharpness[(report.sharpness.metric == metric) & (report.sharpness.params == params)]
    colours = _lr_colours(report.runs.lr)
    ylim = _loss_limits(report, curves)
    fig = Figure(figsize=(FACET_W * len(variants), 2 * FACET_H + 0.6), layout="constrained")
    axes = fig.subplots(2, len(variants), sharex=True, sharey="row", squeeze=False)
    for i, variant in enumerate(variants):
        _draw_loss(axes[0, i], report, variant, curves, colours, ylim)
        mine = values[values.variant == variant].sort_values("step")
        for _, run in mine.groupby("run_id"):
            axes[1, i].plot(run.step, run.value, marker="o", markersize=3, lw=0.9,
                            color=colours.get(float(run.lr.iloc[0]), "grey"))
        axes[1, i].grid(alpha=0.3)
        axes[1, i].set_xlabel("step")
    axes[0, 0].set_ylabel("train loss")
    axes[1, 0].set_ylabel(f"{metric} sharpness")
    if params:
        fig.supxlabel(f"{metric} sharpness measured with {params}", fontsize=9)
    fig.get_layout_engine().set(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    _lr_legend(fig, colours, diverged=(report.runs.status == "diverged").any(), branches=not report.parent_curves.empty)
    return fig


def diagnostics_sites(report: Report, variant: str) -> Figure | None:
    """One variant's cast sites: saturated and flushed fractions by layer x operand (mean over steps
    and runs; grey: no such cast) and the worst sites' values against step."""
    means = site_means(report.diagnostics, variant)
    if means.empty:
        return None
    layers = list(dict.fromkeys(means.layer))
    operands = sorted(set(means.operand), key=lambda op: (OPERAND_ORDER.index(op) if op in OPERAND_ORDER else 99, op))
    fig = Figure(figsize=(3.2 + 1.3 * len(operands) + 4.2, 1.4 + 0.28 * len(layers)), layout="constrained")
    axes = fig.subplots(1, 3, width_ratios=[len(operands), len(operands), 5])
    for ax, name, title in zip(axes, ("saturated", "flushed"), ("saturated (clipped at max)", "flushed to zero")):
        grid = np.full((len(layers), len(operands)), np.nan)
        for row in means.itertuples():
            grid[layers.index(row.layer), operands.index(row.operand)] = getattr(row, name)
        top = np.nanmax(grid) if np.isfinite(grid).any() else 0.0
        ax.imshow(np.ma.masked_invalid(grid), cmap=colormaps["magma_r"].with_extremes(bad="#dddddd"), vmin=0,
                  vmax=max(top, 1e-9), aspect="auto")
        if len(layers) <= 24:  # values in the cells while they stay legible
            for (i, j), v in np.ndenumerate(grid):
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.1%}" if v else "0", ha="center", va="center", fontsize=6,
                            color="white" if top and v > 0.6 * top else "black")
        ax.set_xticks(range(len(operands)), operands, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(layers)), layers if ax is axes[0] else [""] * len(layers), fontsize=7)
        ax.set_title(title, fontsize=9)
    name, sites = worst_sites(report.diagnostics, variant)
    for site in sites:
        series = by_step(report.diagnostics, variant, name, site)
        axes[2].plot(series.index, series.values, marker="o", markersize=3, lw=1, label=site)
    axes[2].set_title(f"worst sites by {name}", fontsize=9)
    axes[2].set_xlabel("step")
    axes[2].grid(alpha=0.3)
    if sites:
        axes[2].legend(fontsize=7)
    fig.suptitle(display_label(variant), fontsize=10)
    return fig


_TRENDS = (("grad_cosine", "model", "gradient cosine vs fp32"), ("grad_error", "model", "gradient relative error"),
           ("attn_logit_max", None, "max attention logit"), ("log_z", "model", "output log Z (mean over tokens)"))


def diagnostics_trends(report: Report) -> Figure | None:
    """Gradient fidelity and the attention / output logit proxies against step, one line per variant
    (mean over its runs)."""
    present = [trend for trend in _TRENDS if (report.diagnostics.name == trend[0]).any()]
    if not present:
        return None
    fig = Figure(figsize=(3.6 * len(present), 3.0), layout="constrained")
    axes = fig.subplots(1, len(present), squeeze=False)[0]
    for ax, (name, site, title) in zip(axes, present):
        for i, variant in enumerate(report.by_variant.variant):
            series = by_step(report.diagnostics, variant, name, site)
            if len(series):
                ax.plot(series.index, series.values, marker="o", markersize=3, lw=1, color=f"C{i % 10}",
                        label=display_label(variant))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
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
