"""Drawing helpers the report's figures share: the PNG encoding, figure sizes, one colour per
learning rate and its legend, and a variant's loss curves in one panel.

Figures are built with `matplotlib.figure.Figure` (no pyplot): no global state, no display needed,
safe in any process.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from precisionlab.analysis.labels import display_label
from precisionlab.analysis.report import Report

__all__ = ["DPI", "FACET_W", "FACET_H", "png", "lr_colours", "lr_legend", "loss_limits", "draw_loss"]

DPI = 110
FACET_W, FACET_H = 3.4, 2.6  # inches per facet


def png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def lr_colours(lrs) -> dict[float, tuple]:
    """One viridis colour per learning rate, by rank: small LRs dark, large LRs yellow."""
    lrs = sorted(set(float(lr) for lr in lrs if not pd.isna(lr)))
    cmap = colormaps["viridis"]
    return {lr: cmap(0.85 * i / max(len(lrs) - 1, 1)) for i, lr in enumerate(lrs)}


def lr_legend(fig: Figure, colours: dict[float, tuple], diverged: bool, branches: bool = False) -> None:
    handles = [Line2D([], [], color=c, lw=2, label=f"lr {lr:.3g}") for lr, c in colours.items()]
    if diverged:
        handles.append(Line2D([], [], color="black", marker="x", lw=0, markersize=7, label="diverged"))
    if branches:
        handles.append(Line2D([], [], color="black", marker="o", mfc="none", lw=0.8, alpha=0.6,
                              label="branch point (parent faint)"))
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 8), frameon=False,
               bbox_to_anchor=(0.5, 1.0))


def loss_limits(report: Report, curves: pd.DataFrame) -> tuple[float, float]:
    """From just below the lowest loss to just above the highest initial loss: divergences are clipped."""
    loss = curves.loss.astype(float)  # an empty column comes back from SQLite as objects
    finite = loss[np.isfinite(loss)]
    starts = pd.concat([report.runs.initial_loss.astype(float), report.runs.loss0.astype(float)])
    top = np.nanmax(starts) if starts.notna().any() else finite.max()
    low = finite.min() if len(finite) else 0.0
    pad = 0.05 * (top - low if top > low else 1.0)
    return low - pad, top + 2 * pad


def draw_loss(ax, report: Report, variant: str, curves: pd.DataFrame, colours, ylim) -> None:
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

