"""The numbers behind the report's "Numerical diagnostics" section, from the store's diagnostics
rows (what each row measures: precisionlab.train.diagnostics).

Per format (variant), every value is first averaged over the runs (learning rates and seeds) at
each step; then:
  site_means     per cast site (layer x operand): the mean over steps of saturated, flushed and
                 cast_error (the report's heatmaps)
  worst_sites    the k cast sites with the largest mean saturated fraction, or where nothing
                 saturates the largest cast error (the report's time series)
  by_step        per step: a value at one site (grad_cosine at "model"), or its max over sites
                 (attn_logit_max over the attention layers)
  summary        one row per variant: the most saturated and most flushed site, the largest
                 cast error, the lowest gradient cosine, the largest attention logit and log Z,
                 the largest update ratio of a weight matrix
"""

from __future__ import annotations

import math

import pandas as pd

from precisionlab.quant.operands import OPERANDS

__all__ = ["CAST_NAMES", "labelled", "site_means", "worst_sites", "by_step", "summary", "display_summary"]

CAST_NAMES = ("saturated", "flushed", "cast_error")
OPERAND_ORDER = (*OPERANDS, "weight_grad")


def labelled(diagnostics: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The store's diagnostics rows of `runs` (label_runs()) with their variant, lr and seed."""
    if diagnostics.empty:
        return pd.DataFrame(columns=[*diagnostics.columns, "variant", "lr", "seed"])
    return diagnostics.merge(runs[["run_id", "variant", "lr", "seed"]], on="run_id")


def _per_step(diagnostics: pd.DataFrame, variant: str, names) -> pd.DataFrame:
    """Rows of `variant` and `names`, averaged over runs: site, name, step, value."""
    rows = diagnostics[(diagnostics.variant == variant) & diagnostics.name.isin(list(names))]
    return rows.groupby(["site", "name", "step"], as_index=False).value.mean()


def site_means(diagnostics: pd.DataFrame, variant: str) -> pd.DataFrame:
    """One row per cast site of `variant`: layer, operand, saturated, flushed, cast_error (mean over
    steps), in model order (as the sites first appear) and OPERANDS order."""
    steps = _per_step(diagnostics, variant, CAST_NAMES)
    if steps.empty:
        return pd.DataFrame(columns=["layer", "operand", *CAST_NAMES])
    wide = steps.groupby(["site", "name"]).value.mean().unstack("name").reindex(columns=list(CAST_NAMES))
    wide = wide.reset_index()
    wide[["layer", "operand"]] = wide.site.str.rsplit("/", n=1, expand=True)
    layers = list(dict.fromkeys(diagnostics[diagnostics.name.isin(CAST_NAMES)].site.str.rsplit("/", n=1).str[0]))
    wide["order"] = [(layers.index(layer), OPERAND_ORDER.index(op) if op in OPERAND_ORDER else len(OPERAND_ORDER))
                     for layer, op in zip(wide.layer, wide.operand)]
    return wide.sort_values("order")[["layer", "operand", *CAST_NAMES]].reset_index(drop=True)


def worst_sites(diagnostics: pd.DataFrame, variant: str, k: int = 3) -> tuple[str, list[str]]:
    """(name, sites): the k cast sites of `variant` with the largest mean saturated fraction, or by
    cast_error when none saturates."""
    means = site_means(diagnostics, variant)
    if means.empty:
        return "saturated", []
    name = "saturated" if (means.saturated > 0).any() else "cast_error"
    top = means.assign(site=means.layer + "/" + means.operand).nlargest(k, name)
    return name, list(top.site)


def by_step(diagnostics: pd.DataFrame, variant: str, name: str, site: str | None = None) -> pd.Series:
    """`name` per step (mean over runs) at `site`, or the max over its sites when `site` is None."""
    steps = _per_step(diagnostics, variant, [name])
    if site is not None:
        steps = steps[steps.site == site]
    return steps.groupby("step").value.max()


def summary(diagnostics: pd.DataFrame, variants: list[str]) -> pd.DataFrame:
    """One row per variant with diagnostics (see the module docstring); values are means over runs."""
    rows = []
    for variant in variants:
        if not (diagnostics.variant == variant).any():
            continue
        means = site_means(diagnostics, variant).assign(site=lambda m: m.layer + "/" + m.operand)
        row = {"variant": variant}
        for name in CAST_NAMES:
            top = means.loc[means[name].idxmax()] if means[name].notna().any() else None
            row[name], row[f"{name}_site"] = (top[name], top.site) if top is not None else (math.nan, "")
        for name, site, pick in (("grad_cosine", "model", "min"), ("attn_logit_max", None, "max"),
                                 ("log_z", "model", "max")):
            series = by_step(diagnostics, variant, name, site)
            row[name] = getattr(series, pick)() if len(series) else math.nan
        updates = _per_step(diagnostics, variant, ["update_ratio"])
        updates = updates[updates.site.str.endswith("weight")]
        row["update_ratio"] = updates.value.max() if len(updates) else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def display_summary(table: pd.DataFrame) -> pd.DataFrame:
    """summary() as the strings every output shows."""
    def value(x, spec):
        return "–" if pd.isna(x) else format(x, spec)

    def at(x, site, spec):
        return "–" if pd.isna(x) else f"{x:{spec}} ({site})"
    return pd.DataFrame({
        "format": table.variant,
        "most saturated": [at(x, s, ".2%") for x, s in zip(table.saturated, table.saturated_site)],
        "most flushed": [at(x, s, ".2%") for x, s in zip(table.flushed, table.flushed_site)],
        "largest cast error": [at(x, s, ".3g") for x, s in zip(table.cast_error, table.cast_error_site)],
        "min grad cosine": [value(x, ".4f") for x in table.grad_cosine],
        "max attn logit": [value(x, ".3g") for x in table.attn_logit_max],
        "max log Z": [value(x, ".3g") for x in table.log_z],
        "max update ratio": [value(x, ".3g") for x in table.update_ratio],
    })
