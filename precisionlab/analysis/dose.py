"""Dose-response: the final loss and the divergence rate as bits are taken away, and the frontier.

Pure functions of the labelled runs (`labels.label_runs`) and the per-variant table the report
already has (`report.by_variant`: its reference, best LR and LR sensitivities); no store access.

Definitions (the report's Definitions section repeats them):
  axis        variants that differ in one kind of bits, each a width on the axis: mantissa bits at a
              fixed exponent width ("mantissa bits at E8": e8m7, e8m3, ..., e8m0), exponent bits at a
              fixed mantissa width ("exponent bits at M7": e8m7, e6m7, e5m7, e4m7), and bits per element
              across every recipe (`labels.bits_per_element`: a block format's scales count, mxfp4 4.25,
              nvfp4 4.5), kept where it holds more than any one of the others. The element-format axes
              take variants whose x, w and grad share one format; variants that differ in another
              setting ([key=value]) form axes of their own. An axis has two widths or more.
  reference   the report's reference (the variant with the most bits, the tables' first row), on the
              axis or not.
  Δ           per LR: a width's final validation loss minus the reference's, paired by seed over the
              seeds where both completed, with its 95% interval (`stats.paired_margin`).
  decision    per width and LR, against the margin δ (nats per byte; `precisionlab report --margin`):
                within     Δ's interval lies below +δ: not worse than the reference by δ or more
                beyond     the interval lies above +δ
                undecided  it straddles +δ, or there is no interval (fewer than 3 paired seeds)
                diverged   a run diverged whose seed's reference run did not: never "within"
              "within" is a one-sided test at 1% on normal seed-to-seed noise (`stats.paired_margin`).
  worse       Δ's interval lies above 0: significantly worse, by any amount.
  frontier    per axis and LR: the fewest bits among the "within" widths, counting a width only when
              every wider width of the axis is "within" too (a monotone frontier: a narrower width
              that is "within" past a failing one is named, never counted); widths of equal bits
              count together. Overall: the frontier that holds at every LR (the widest of them).
  first worse the widest width whose Δ is significantly above 0 (per LR: 95% intervals, not
              adjusted across LRs or widths).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import pandas as pd

from precisionlab.analysis.labels import (bits_per_element, display_label, format_order, role_formats,
                                          role_formats_parsed)
from precisionlab.analysis.stats import CI, exact_binomial_ci, interval_text, mean_interval, paired_margin
from precisionlab.numerics.formats import FloatFormat
from precisionlab.store import DONE

__all__ = ["Dose", "DEFAULT_MARGIN", "DEFINITIONS", "axes", "check_margin", "points", "decide", "frontiers",
           "sentence", "study", "display_frontiers"]

DEFAULT_MARGIN = 0.02  # nats per byte: about the seed spread of the tiny model's final loss
WITHIN = ("within", "reference")  # decisions that keep a frontier going

DEFINITIONS = [
    ("dose-response", "final validation loss (mean and interval of the completed runs) and divergence rate "
                      "(exact interval) against bits, per learning rate, along each axis: mantissa bits at a fixed "
                      "exponent width, exponent bits at a fixed mantissa width, bits per element across recipes "
                      "(a block format's scales included)"),
    ("Δ, decision", "Δ: final validation loss minus the reference's at the same LR, paired by seed over the seeds "
                    "both completed, with its 95% interval; within: the interval lies below the margin δ (not worse "
                    "by δ or more); beyond: above δ; undecided: it straddles δ or has fewer than 3 pairs; diverged: a "
                    "run diverged whose seed's reference run did not (never within)"),
    ("frontier", "per axis and LR, the fewest bits whose runs are within, counting a width only when every wider "
                 "width is within too (monotone); overall: the frontier that holds at every LR. First worse: the "
                 "widest width whose Δ interval lies above 0 (per LR, not adjusted across LRs)"),
]


@dataclass
class Dose:
    margin: float                 # δ, nats per byte
    reference: str | None         # the report's reference variant
    best_lr: float                # the reference's best LR: the one the sentence speaks of
    points: pd.DataFrame          # one row per axis x width x LR (`points`)
    frontiers: pd.DataFrame       # one row per axis x LR, and per axis over all LRs (lr NaN) (`frontiers`)
    sentence: str = ""            # the report's first line; empty when there is no axis
    axes: list[tuple[str, str, dict[str, float]]] = field(default_factory=list)


def check_margin(value) -> float:
    """δ as a float; ValueError (one line: what is wrong, what is accepted) unless a finite number > 0."""
    try:
        margin = float(value)
    except (TypeError, ValueError):
        margin = math.nan
    if not (math.isfinite(margin) and margin > 0):
        raise ValueError(f"--margin {value}: not a usable margin; accepted: a number > 0 in nats per byte, "
                         f"e.g. {DEFAULT_MARGIN}")
    return margin


# --------------------------------------------------------------------------- axes


def axes(variants) -> list[tuple[str, str, dict[str, float]]]:
    """(name, kind, {variant: x}) per axis among `variants`: kind "mantissa" (x = mantissa bits),
    "exponent" (x = exponent bits) or "bits" (x = bits per element); see the module docstring."""
    variants = sorted(dict.fromkeys(variants), key=format_order)
    groups: dict[tuple, dict[str, float]] = {}
    for variant in variants:
        fmts = role_formats_parsed(variant)
        if not fmts or len(set(role_formats(variant))) != 1 or not isinstance(fmts[0], FloatFormat):
            continue
        f, extras = fmts[0], variant.partition(" [")[2]
        for kind, fixed, x in (("mantissa", f"E{f.exp_bits}", f.man_bits), ("exponent", f"M{f.man_bits}", f.exp_bits)):
            widths = groups.setdefault((kind, fixed, extras), {})
            if x not in widths.values():  # two names of one format (bf16, e8m7): the first in the tables' order
                widths[variant] = float(x)
    out = []
    for (kind, fixed, extras), widths in groups.items():
        if len(widths) >= 2:
            out.append((f"{kind} bits at {fixed}" + (f" [{extras}" if extras else ""), kind, widths))
    bits = {v: bits_per_element(v) for v in variants if bits_per_element(v) is not None}
    if len(set(bits.values())) >= 2 and not any(set(bits) == set(w) for _, _, w in out):
        out.append(("bits per element", "bits", bits))
    return out


# --------------------------------------------------------------------------- points


_POINT_COLUMNS = ["axis", "kind", "variant", "x", "lr", "finished", "diverged", "diverged_low",
                  "diverged_high", "ref_diverged", "ref_finished", "loss_mean", "loss_low", "loss_high",
                  "loss_interval", "pairs", "delta", "delta_low", "delta_high", "delta_interval", "decision", "worse",
                  "unmatched_diverged", "lr_sensitivity", "lr_sensitivity_low", "lr_sensitivity_high",
                  "lr_sensitivity_interval"]


def points(runs: pd.DataFrame, reference: str, margin: float, sensitivity: pd.DataFrame | None = None,
           axis_list=None) -> pd.DataFrame:
    """One row per axis x width x LR (_POINT_COLUMNS): finished runs, divergences and their exact interval (the
    reference's beside them), the completed runs' final loss (mean, interval), Δ against `reference`
    paired by seed with its interval, the decision against `margin` and `worse` (module docstring),
    and the width's LR sensitivity from `sensitivity` (report.by_variant; only where it ran >= 2 LRs)."""
    axis_list = axes(runs.variant.unique()) if axis_list is None else axis_list
    finished = runs[runs.status.isin(DONE)]
    at_lr = {lr: g for lr, g in finished.groupby("lr")}  # one pass: sweeps can hold many LRs
    sens = sensitivity.set_index("variant") if sensitivity is not None and len(sensitivity) else None
    rows = []
    for name, kind, widths in axis_list:
        for variant, x in widths.items():
            for lr, g in at_lr.items():
                row = _point(g, variant, reference, margin)
                if row is None:
                    continue
                s = sens.loc[variant] if sens is not None and variant in sens.index else None
                several = s is not None and s.get("lrs", 0) >= 2
                row.update({k: (s[k] if several else (math.nan if k != "lr_sensitivity_interval" else ""))
                            for k in ("lr_sensitivity", "lr_sensitivity_low", "lr_sensitivity_high",
                                      "lr_sensitivity_interval")})
                rows.append({"axis": name, "kind": kind, "variant": variant, "x": x, "lr": lr, **row})
    return pd.DataFrame(rows, columns=_POINT_COLUMNS)


def _point(at_lr: pd.DataFrame, variant: str, reference: str, margin: float) -> dict | None:
    """One width at one LR from that LR's finished runs (_POINT_COLUMNS after x and lr)."""
    mine, ref = at_lr[at_lr.variant == variant], at_lr[at_lr.variant == reference]
    if mine.empty:
        return None
    done = mine[mine.status == "completed"].groupby("seed").final_val_loss.mean().astype(float)
    ref_done = ref[ref.status == "completed"].groupby("seed").final_val_loss.mean().astype(float)
    diverged = set(mine[mine.status == "diverged"].seed)
    test = decide(done.to_dict(), diverged, ref_done.to_dict(), set(ref[ref.status == "diverged"].seed), margin)
    low, high = exact_binomial_ci(len(diverged), len(mine))
    mean, loss_low, loss_high, loss_kind = mean_interval(done.to_numpy())
    return {"finished": len(mine), "diverged": len(diverged), "diverged_low": low,
            "diverged_high": high, "ref_diverged": int((ref.status == "diverged").sum()), "ref_finished": len(ref),
            "loss_mean": mean, "loss_low": loss_low, "loss_high": loss_high, "loss_interval": loss_kind,
            "pairs": test["n"], "delta": test["diff"], "delta_low": test["low"], "delta_high": test["high"],
            "delta_interval": test["kind"], "decision": "reference" if variant == reference else test["decision"],
            "worse": bool(test["worse"]) and variant != reference, "unmatched_diverged": test["unmatched"]}


def decide(done: Mapping, diverged: Collection, ref_done: Mapping, ref_diverged: Collection, margin: float) -> dict:
    """The decision rule of one width against the reference (module docstring, "decision"), from each
    one's completed runs (`done`: seed -> final validation loss) and diverged seeds: `stats.paired_margin`
    over the seeds both completed (n, diff, low, high, kind, decision, worse), the decision "diverged"
    when the width diverged on a seed the reference did not diverge on (it got through, or never ran),
    and `unmatched`, how many such seeds. The report's dose-response (`points`) and the frontier
    search (`precisionlab.sweep.frontier.judge`) both decide with it."""
    seeds = [s for s in done if s in ref_done]
    out = paired_margin([done[s] for s in seeds], [ref_done[s] for s in seeds], margin)
    unmatched = set(diverged) - set(ref_diverged)
    if unmatched:
        out["decision"] = "diverged"
    out["unmatched"] = len(unmatched)
    return out


# --------------------------------------------------------------------------- frontiers


_FRONTIER_COLUMNS = ["axis", "kind", "lr", "frontier", "frontier_x", "stop", "stop_decision", "first_worse",
                     "undecided", "diverged", "not_counted", "limited_by"]


def frontiers(pts: pd.DataFrame) -> pd.DataFrame:
    """One row per axis x LR, then one per axis over all LRs (lr NaN), _FRONTIER_COLUMNS: the frontier
    (its widths, joined by ' / ' where they tie in bits, and x), the first width that stopped it and
    its decision, the first worse width, the undecided and diverged widths, the widths "within" past
    the stop (not counted: the frontier is monotone); overall, the LRs whose frontier it is."""
    rows = []
    for axis, g in pts.groupby("axis", sort=False):
        per_lr = []
        for lr, h in g.groupby("lr"):
            per_lr.append(_walk(h.sort_values("x", ascending=False, kind="stable")) | {"axis": axis,
                                                                                      "kind": h.kind.iloc[0], "lr": lr})
        rows += per_lr
        rows.append(_overall(axis, g.kind.iloc[0], per_lr))
    return pd.DataFrame(rows, columns=_FRONTIER_COLUMNS)


def _walk(h: pd.DataFrame) -> dict:
    """The frontier of one axis at one LR, widths widest first (ties in x decided together)."""
    frontier, frontier_x, stop, stop_decision, not_counted = "", math.nan, "", "", []
    for x, tie in h.groupby("x", sort=False):
        failing = tie[~tie.decision.isin(WITHIN)]
        if not stop and failing.empty:
            frontier, frontier_x = " / ".join(tie.variant), x
        elif not stop:
            stop, stop_decision = failing.variant.iloc[0], failing.decision.iloc[0]
        else:
            not_counted += list(tie[tie.decision == "within"].variant)
    worse = h[h.worse]
    return {"frontier": frontier, "frontier_x": frontier_x, "stop": stop, "stop_decision": stop_decision,
            "first_worse": worse.variant.iloc[0] if len(worse) else "",
            "undecided": ", ".join(h[h.decision == "undecided"].variant),
            "diverged": ", ".join(h[h.decision == "diverged"].variant),
            "not_counted": ", ".join(not_counted), "limited_by": ""}


def _overall(axis: str, kind: str, per_lr: list[dict]) -> dict:
    """The frontier that holds at every LR: the widest per-LR frontier (none if one LR has none)."""
    xs = [row["frontier_x"] for row in per_lr]
    out = {k: "" for k in _FRONTIER_COLUMNS} | {"axis": axis, "kind": kind, "lr": math.nan, "frontier_x": math.nan}
    if per_lr and not any(math.isnan(x) for x in xs):
        widest = max(xs)
        binding = [row for row in per_lr if row["frontier_x"] == widest]
        out.update(frontier=binding[0]["frontier"], frontier_x=widest,
                   limited_by=", ".join(f"{row['lr']:.3g}" for row in binding))
    else:
        out["limited_by"] = ", ".join(f"{row['lr']:.3g}" for row in per_lr if math.isnan(row["frontier_x"]))
    return out


# --------------------------------------------------------------------------- the sentence


def _name(pts: pd.DataFrame, variant: str) -> str:
    """A width as the sentence names it: its label as figures show it, with its bits on the bits-per-element axis."""
    row = pts[pts.variant == variant].iloc[0]
    return f"{display_label(variant)} ({row.x:g} bits)" if row.kind == "bits" else display_label(variant)


def _delta(row) -> str:
    return "Δ " + interval_text(row.delta, row.delta_low, row.delta_high, row.delta_interval, "+.3f")


def _stop_clause(pts: pd.DataFrame, variant: str, decision: str) -> str:
    row = pts[pts.variant == variant].iloc[0]
    name = _name(pts, variant)
    if decision == "beyond":
        return f"{name} costs {interval_text(row.delta, row.delta_low, row.delta_high, row.delta_interval, '+.3f')}"
    if decision == "diverged":
        return (f"{name} diverges ({row.diverged}/{row.finished} runs; the reference {row.ref_diverged}/"
                f"{row.ref_finished})")
    if row.delta_interval == CI:
        return f"undecided at {name}: the interval [{row.delta_low:+.3f}, {row.delta_high:+.3f}] crosses the margin"
    spread = f" ({interval_text(row.delta, row.delta_low, row.delta_high, row.delta_interval, '+.3f')})" \
        if row.pairs else ""
    pairs = int(row.pairs)
    return (f"undecided at {name}: {pairs} paired seed{'s give' if pairs != 1 else ' gives'} no confidence interval "
            f"(3 needed){spread}")


def _axis_sentence(axis: str, pts: pd.DataFrame, table: pd.DataFrame, reference: str, lr: float,
                   margin: float) -> str:
    here = pts[(pts.axis == axis) & (pts.lr == lr)]
    row = table[(table.axis == axis) & (table.lr == lr)]
    if here.empty or row.empty:
        return ""
    f = row.iloc[0]
    head = f"{axis[0].upper()}{axis[1:]}: "
    clauses, shown = [], display_label(reference)
    last = here.sort_values("x").iloc[0].variant  # the narrowest width run
    if f.frontier and f.frontier != reference:
        front = here[here.variant == f.frontier.split(" / ")[-1]].iloc[0]
        clauses.append(f"training matches {shown} down to {_name(here, front.variant)}"
                       + (", the narrowest width run," if front.variant == last else "")
                       + f" at LR {lr:.3g} ({_delta(front)}, margin {margin:g})")
    elif f.frontier:
        clauses.append(f"no narrower width matches {shown} at LR {lr:.3g} (margin {margin:g})")
    else:
        clauses.append(f"no width matches {shown} at LR {lr:.3g} (margin {margin:g})")
    worse = here[here.variant == f.first_worse].iloc[0] if f.first_worse else None
    worse_at_stop = worse is not None and f.first_worse == f.stop and worse.decision == "beyond"
    if f.stop:
        clauses.append(_stop_clause(here, f.stop, f.stop_decision)
                       + (", the first width worse at 95% (before Holm)" if worse_at_stop else ""))
    undecided = [v for v in f.undecided.split(", ") if v and v != f.stop]
    if undecided:
        clauses.append("undecided also at " + ", ".join(_name(here, v) for v in undecided))
    if worse is not None and not worse_at_stop:
        tail = interval_text(worse.delta, worse.delta_low, worse.delta_high, worse.delta_interval, "+.3f")
        if worse.decision == "within":
            clauses.append(f"{_name(here, worse.variant)} is already worse, by less than the margin ({tail})")
        else:
            clauses.append(f"{_name(here, worse.variant)} costs {tail}, the first width worse at 95% (before Holm)")
    others = [v for v in f.diverged.split(", ") if v and v != f.stop]
    if others:
        counts = here.set_index("variant")
        clauses.append(", ".join(_name(here, v) for v in others) + (" diverge (" if len(others) > 1 else " diverges (")
                       + ", ".join(f"{counts.loc[v].diverged}/{counts.loc[v].finished}" for v in others) + ")")
    if f.not_counted:
        clauses.append(", ".join(_name(here, v) for v in f.not_counted.split(", "))
                       + " within the margin past a width that is not: not counted (monotone frontier)")
    overall = table[(table.axis == axis) & table.lr.isna()]
    if pts[pts.axis == axis].lr.nunique() >= 2 and len(overall):
        o, lrs = overall.iloc[0], pts[pts.axis == axis].lr.nunique()
        by = f" (set by LR {o.limited_by})" if len(o.limited_by.split(", ")) < lrs else ""
        if not o.frontier:
            clauses.append(f"no width holds at every LR (none at LR {o.limited_by})")
        elif o.frontier == reference:
            clauses.append(f"at every LR: no narrower width{by}")
        else:
            clauses.append(f"at every LR: down to {_name(pts[pts.axis == axis], o.frontier.split(' / ')[-1])}{by}")
    return head + "; ".join(clauses) + "."


def sentence(pts: pd.DataFrame, table: pd.DataFrame, reference: str | None, best_lr: float, margin: float) -> str:
    """The report's first line: per axis, the frontier at the reference's best LR with Δ, what stops it,
    the first width worse at 95% (not Holm-adjusted), diverged and undecided widths, and the frontier at every LR;
    empty when there is no axis."""
    if pts.empty or reference is None or pd.isna(best_lr):
        return ""
    on_element_axes = set(pts[pts.kind != "bits"].variant)
    said = [axis for axis, g in pts.groupby("axis", sort=False)  # a bits axis of element formats only repeats them
            if g.kind.iloc[0] != "bits" or not set(g.variant) <= on_element_axes]
    parts = [_axis_sentence(axis, pts, table, reference, best_lr, margin) for axis in said]
    return " ".join(p for p in parts if p)


def study(runs: pd.DataFrame, by_variant: pd.DataFrame, margin: float = DEFAULT_MARGIN) -> Dose:
    """Everything the report shows about bits: the points, the frontiers and the sentence, against
    by_variant's reference (first row) at its best LR."""
    margin = check_margin(margin)
    reference = str(by_variant.variant.iloc[0]) if len(by_variant) else None
    best_lr = float(by_variant.best_lr.iloc[0]) if len(by_variant) else math.nan
    axis_list = axes(runs.variant.unique()) if reference is not None else []
    pts = points(runs, reference, margin, by_variant, axis_list) if axis_list else \
        pd.DataFrame(columns=_POINT_COLUMNS)
    table = frontiers(pts) if len(pts) else pd.DataFrame(columns=_FRONTIER_COLUMNS)
    return Dose(margin=margin, reference=reference, best_lr=best_lr, points=pts, frontiers=table,
                sentence=sentence(pts, table, reference, best_lr, margin), axes=axis_list)


def display_frontiers(dose: Dose) -> pd.DataFrame:
    """The frontier table as strings: axis, LR ('all' over every LR), frontier, what stopped it, first worse."""
    t = dose.frontiers
    return pd.DataFrame({
        "axis": t.axis,
        "lr": ["all" if pd.isna(lr) else f"{lr:.3g}" for lr in t.lr],
        "frontier": [f or "none" for f in t.frontier],
        "stopped by": [f"{s} ({d})" if s else "–" for s, d in zip(t.stop, t.stop_decision)],
        "first worse": [w or "–" for w in t.first_worse],
        "undecided": [u or "–" for u in t.undecided],
        "not counted (monotone)": [n or "–" for n in t.not_counted],
    })
