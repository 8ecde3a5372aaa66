"""The report's figures of what was watched during training: the early-warning signals before a
divergence, sharpness against step, and the numerical diagnostics of the casts.

Drawn from a `precisionlab.analysis.report.Report` with matplotlib (`analysis.drawing`); the
stability figures and `figures(report)`, every figure by file name, are in `analysis.plots`.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from precisionlab.analysis.diagnostics import OPERAND_ORDER, by_step, site_means, worst_sites
from precisionlab.analysis.drawing import FACET_H, FACET_W, draw_loss, loss_limits, lr_colours, lr_legend
from precisionlab.analysis.labels import display_label
from precisionlab.analysis.report import Report

__all__ = ["early_warning", "early_warning_roc", "sharpness_curves", "diagnostics_sites", "diagnostics_trends"]


def early_warning(report: Report) -> Figure:
    """Each signal of the diverged runs against steps before their divergence, relative to their
    time-matched threshold (warning.aligned): one panel per signal, one line per run."""
    table = report.warning_aligned
    names = sorted(table.signal.unique())
    cols = min(len(names), 3)
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(FACET_W * cols, FACET_H * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    colours = lr_colours(table.lr)
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
    lr_legend(fig, colours, diverged=False)
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
    colours = lr_colours(report.runs.lr)
    ylim = loss_limits(report, curves)
    fig = Figure(figsize=(FACET_W * len(variants), 2 * FACET_H + 0.6), layout="constrained")
    axes = fig.subplots(2, len(variants), sharex=True, sharey="row", squeeze=False)
    for i, variant in enumerate(variants):
        draw_loss(axes[0, i], report, variant, curves, colours, ylim)
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
    lr_legend(fig, colours, diverged=(report.runs.status == "diverged").any(), branches=not report.parent_curves.empty)
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

