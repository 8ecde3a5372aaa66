"""Report tables as text: the strings every output (terminal, HTML, Markdown) shows."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from precisionlab.analysis.stats import CI, RANGE, interval_text

__all__ = ["display_by_lr", "display_by_variant", "display_compare", "display_warning", "display_warning_windows",
           "text_table"]


def _num(x: Any, spec: str = ".4f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _mean_std(mean: float, std: float) -> str:
    """'mean ± std', or 'mean' alone where the std is NaN (fewer than two runs)."""
    if math.isnan(mean):
        return "–"
    return f"{mean:.4f}" if math.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def _interval(x: float, low: float, high: float, kind: str, spec: str = ".3f") -> str:
    """'x [low, high]' for a 95% CI, 'x (range low to high)' for the seeds' range (2 seeds), x alone
    without either (one seed); see `stats.interval_text`."""
    return interval_text(x, low, high, kind if isinstance(kind, str) else "", spec)


def _bounds(low: float, high: float, kind: str) -> str:
    """The interval column alone: '[low, high]', 'range low to high', 'all seeds equal' or '–'."""
    if kind == CI:
        return f"[{low:.4f}, {high:.4f}]"
    if kind == RANGE:
        return "all seeds equal" if f"{low:.4f}" == f"{high:.4f}" else f"range {low:.4f} to {high:.4f}"
    return "–"


def _rate(k: int, n: int, low: float, high: float) -> str:
    """'k/n (low–high%)': a count with its exact 95% interval."""
    return f"{k}/{n}" if n == 0 else f"{k}/{n} ({100 * low:.0f}–{100 * high:.0f}%)"


def display_by_lr(table: pd.DataFrame) -> pd.DataFrame:
    """by_lr() as the strings every output shows."""
    return pd.DataFrame({
        "format": table.variant,
        "lr": [f"{lr:.3g}" for lr in table.lr],
        "diverged": [f"{d}/{f}" for d, f in zip(table.diverged, table.finished)],
        "median div. step": [_num(s, ".0f") for s in table.median_diverged_step],
        **({"not conv.": [f"{k}/{f}" for k, f in zip(table.not_converged, table.finished)]}
           if "not_converged" in table and table.not_converged.any() else {}),
        "final val loss": [_mean_std(m, s) for m, s in zip(table.final_loss_mean, table.final_loss_std)],
        "95% CI or range": [_bounds(lo, hi, k) for lo, hi, k in zip(table.final_loss_low, table.final_loss_high,
                                                                  table.final_loss_interval)],
        "spikes": table.spikes.astype(str),
        **({"failed": table.failed.astype(str)} if table.failed.any() else {}),
        **({"Δ loss vs ref.": [_interval(x, lo, hi, k, "+.3f") for x, lo, hi, k in zip(
                table.final_loss_diff, table.final_loss_diff_low, table.final_loss_diff_high,
                table.final_loss_diff_interval)],
            "p (loss)": [_num(p, ".2g") for p in table.p_final_loss_holm],
            "Δ best loss": [_interval(x, lo, hi, k, "+.3f") for x, lo, hi, k in zip(
                table.min_loss_diff, table.min_loss_diff_low, table.min_loss_diff_high, table.min_loss_diff_interval)],
            "p (best loss)": [_num(p, ".2g") for p in table.p_min_loss_holm]} if "p_final_loss_holm" in table else {}),
    })


def _loss_test(table: pd.DataFrame, measure: str) -> list[str]:
    """Each variant's loss test of `measure` with the smallest Holm p: 'Δ [low, high]', with
    '@ lr' when the grid has several LRs (the other LRs: display_by_lr)."""
    several = table.lrs.max() > 1 if len(table) else False
    return [_interval(x, lo, hi, k, "+.3f") + (f" @ {lr:.3g}" if several and not math.isnan(lr) else "")
            for x, lo, hi, k, lr in zip(table[f"{measure}_diff"], table[f"{measure}_diff_low"],
                                        table[f"{measure}_diff_high"], table[f"{measure}_diff_interval"],
                                        table[f"{measure}_lr"])]


def display_by_variant(table: pd.DataFrame) -> pd.DataFrame:
    """by_variant() as the strings every output shows: estimates with their 95% intervals, the
    paired differences from the reference and the Holm-adjusted p-values behind the verdict, which
    names the tests that decided it. A one-LR grid has no LR-sensitivity columns."""
    several = bool(len(table)) and table.lrs.max() > 1
    sensitivity = {"LR sensitivity": [_interval(x, lo, hi, k) for x, lo, hi, k in zip(
        table.lr_sensitivity, table.lr_sensitivity_low, table.lr_sensitivity_high, table.lr_sensitivity_interval)]}
    tests = {"ΔS vs ref.": [_interval(x, lo, hi, k, "+.3f") for x, lo, hi, k in zip(
                 table.sensitivity_diff, table.sensitivity_diff_low, table.sensitivity_diff_high,
                 table.sensitivity_diff_interval)],
             "p (ΔS)": [_num(p, ".2g") for p in table.p_sensitivity_holm]} if several else {}
    return pd.DataFrame({
        "format": table.variant,
        "diverged": [_rate(d, f, lo, hi) for d, f, lo, hi in zip(table.diverged, table.finished, table.diverged_low,
                                                                  table.diverged_high)],
        **(sensitivity if several else {}),
        "best lr": [_num(x, ".3g") for x in table.best_lr],
        "loss at best lr": [_interval(x, lo, hi, k, ".4f") for x, lo, hi, k in zip(
            table.best_lr_loss, table.best_lr_loss_low, table.best_lr_loss_high, table.best_lr_loss_interval)],
        "stable lrs": [f"{s}/{n}" for s, n in zip(table.stable_lrs, table.lrs)],
        **({"not conv.": [f"{k}/{f}" for k, f in zip(table.not_converged, table.finished)]}
           if "not_converged" in table and table.not_converged.any() else {}),
        "spikes": table.spikes.astype(str),
        "Δ loss vs ref.": _loss_test(table, "final_loss"),
        "p (loss)": [_num(p, ".2g") for p in table.p_final_loss_holm],
        "Δ best loss vs ref.": _loss_test(table, "min_loss"),
        "p (best loss)": [_num(p, ".2g") for p in table.p_min_loss_holm],
        **tests,
        "p (div.)": [_num(p, ".2g") for p in table.p_diverged_holm],
        "vs reference": [f"{v} ({d})" if d else v for v, d in zip(table.verdict, table.decided_by)],
    })


def display_warning(table: pd.DataFrame, lead: int) -> pd.DataFrame:
    """early_warning() as the strings every output shows."""
    return pd.DataFrame({
        "signal": table.signal,
        "diverged runs (with a threshold)": [f"{d} ({c})" for d, c in zip(table.diverged, table.calibrated)],
        f"warned >= {lead} steps ahead": [_rate(w, c, lo, hi) for w, c, lo, hi in zip(
            table.warned, table.calibrated, table.warned_low, table.warned_high)],
        "median lead (steps)": [_num(x, ".0f") for x in table.median_lead],
        "false alarms (completed)": [_rate(f, n, lo, hi) for f, n, lo, hi in zip(
            table.false_alarms, table.completed, table.false_alarm_low, table.false_alarm_high)],
        f"AUC >= {lead} steps ahead": [_interval(a, lo, hi, CI, ".2f") for a, lo, hi in zip(
            table.auc, table.auc_low, table.auc_high)],
    })


def display_warning_windows(windows: pd.DataFrame) -> pd.DataFrame:
    """windows() as one row per signal, one column per lead: 'AUC [interval] (diverged runs)'."""
    out = {"signal": list(dict.fromkeys(windows.signal))}
    for lead, rows in windows.groupby("lead", sort=True):
        rows = rows.set_index("signal").reindex(out["signal"])
        out[f"AUC >= {lead} ahead"] = ["–" if pd.isna(r.auc) else _interval(r.auc, r.auc_low, r.auc_high, CI, ".2f")
                                       + f" ({int(r.diverged)})" for r in rows.itertuples()]
    return pd.DataFrame(out)


def display_compare(table: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """compare() as the strings every output shows, columns named after the sweeps: each sweep's
    estimates with their intervals, then the paired differences (b - a) with theirs."""
    def div(d, f):
        return "–" if pd.isna(f) else f"{int(d)}/{int(f)}"
    def cells(name, spec=".3f", side=""):
        columns = [f"{name}{part}{side and '_' + side}" for part in ("", "_low", "_high", "_interval")]
        return [_interval(x, lo, hi, k, spec) for x, lo, hi, k in zip(*(table[c] for c in columns))]
    out = {"format": table.variant}
    for side, name in (("a", a), ("b", b)):
        out[f"{name}: diverged"] = [div(d, f) for d, f in zip(table[f"diverged_{side}"], table[f"finished_{side}"])]
        out[f"{name}: LR sens."] = cells("lr_sensitivity", side=side)
        out[f"{name}: best lr"] = [_num(x, ".3g") for x in table[f"best_lr_{side}"]]
        out[f"{name}: loss"] = cells("best_lr_loss", ".4f", side)
    out[f"ΔS ({b} − {a})"] = cells("sensitivity_diff", "+.3f")
    out["p (ΔS)"] = [_num(p, ".2g") for p in table.p_sensitivity]
    out[f"Δ loss ({b} − {a})"] = cells("loss_diff", "+.4f")
    out["p (Δ loss)"] = [_num(p, ".2g") for p in table.p_loss]
    out[f"p ({a} more div.)"] = [_num(p, ".2g") for p in table.p_a_more_diverged]
    out[f"p ({b} more div.)"] = [_num(p, ".2g") for p in table.p_b_more_diverged]
    return pd.DataFrame(out)


def text_table(df: pd.DataFrame) -> str:
    """Fixed-width text: the first column left-aligned, the others right-aligned."""
    cells = [list(df.columns)] + df.astype(str).values.tolist()
    widths = [max(len(row[i]) for row in cells) for i in range(len(df.columns))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in cells)

