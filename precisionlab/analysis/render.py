"""The report's documents: `write(report, out)` fills a folder with report.html
(self-contained: plots embedded as base64 PNG, no external resources),
report.md, one CSV per table and the PNG plots; `write_comparison(a, b, out)`
puts two sweeps side by side (compare.html, compare.md, compare.csv, a plot).

Everything is rendered in memory, then written into a staging folder beside `out`
and swapped into place in one rename, so an interrupted report leaves the whole old
report or the whole new one, never a mix (`_write_files`).
"""

from __future__ import annotations

import base64
import html
import os
import re
import shutil
import time
import uuid
from pathlib import Path

import pandas as pd

from precisionlab.analysis import plots
from precisionlab.analysis.diagnostics import display_summary, site_means, summary
from precisionlab.analysis.dose import DEFINITIONS as DOSE_DEFINITIONS, display_frontiers
from precisionlab.analysis.report import Report, ReportError
from precisionlab.analysis.warning import DEFAULT_LEAD
from precisionlab.analysis.tables import (
    display_by_lr,
    display_by_variant,
    display_warning,
    display_warning_windows,
    display_compare,
)
from precisionlab.runtime import pid_alive, swap_folders
from precisionlab.store.names import sweep_name_problem

__all__ = ["write", "markdown_table", "write_comparison", "default_out", "html_document", "comparison_html", "markdown_document", "sharpness_display",
           "diagnostics_display", "DEFINITIONS"]

DEFINITIONS = [
    ("format", "the formats of the GEMM inputs: one name when activations (x), weights (w) and output "
               "gradients (grad) share it, else x/w/grad; fp32 when nothing is cast; [key=value] names any "
               "other setting that differs between runs of one format (besides lr and seed)"),
    ("diverged", "diverged runs / finished runs (completed + diverged); a run diverges when its loss is "
                 "NaN/Inf at any step or it ends no better than an untrained model (the median of its last "
                 "train losses above ℓ₀ = ln V, V the vocabulary size), or an early-stop rule "
                 "(train.divergence.rule) stops it"),
    ("median div. step", "median step at which the diverged runs stopped"),
    ("final val loss", "mean ± std (ddof=1) of the final validation loss over the completed seeds, and the "
                       "mean's interval (see intervals)"),
    ("intervals", "[low, high]: a 95% confidence interval, from 3 seeds on (Student's t at the 98% quantile for "
                  "means and paired differences, which keeps 95% coverage on skewed seed-to-seed variation; "
                  "simultaneous t bounds over the LR grid for LR sensitivity and ΔS). With 2 seeds no interval "
                  "is claimed: 'range low to high' is the seeds' minimum and maximum. One seed: the value alone"),
    ("spikes", "loss spikes summed over the runs: a spike is a stretch of steps whose train loss lies more than "
               "train.spikes.z (8) robust standard deviations above the median of the previous train.spikes.window "
               "(20) losses; the robust standard deviation is 1.4826 × the MAD of the window's successive "
               "differences / √2, floored at 0.1% of the window's median (train.spikes)"),
    ("LR sensitivity", "Wortsman et al. 2023: mean over the LR grid of ℓ(η) − min_η ℓ(η), where ℓ(η) is the "
                       "mean over seeds of the final validation loss capped at ℓ₀ = ln V (an untrained model's loss), a diverged "
                       "run counting as ℓ₀; 0 means every LR trains equally well. Estimate and interval use the "
                       "seeds that finished every LR"),
    ("best lr / loss at best lr", "the LR with the lowest ℓ(η), and the mean of the completed runs' final "
                                  "validation loss there with its interval"),
    ("diverged (%)", "diverged / finished runs over the grid, with the exact (Clopper–Pearson) 95% interval "
                     "of the rate"),
    ("stable lrs", "LRs of the grid at which no seed diverged"),
    ("not conv.", "did not converge: completed runs whose final validation loss did not get half of the way "
                  "from ℓ₀ = ln V down to the reference's mean loss at its best LR (shown only when "
                  "there are any); diverged runs stopped, these ran to the end without learning enough"),
    ("ΔS vs ref.", "LR sensitivity minus the reference's (first row) over the seeds both finished at every LR "
                   "(the same seed: the same initial weights and batches), with its paired interval"),
    ("Δ loss vs ref., Δ best loss vs ref.", "the final (best: min over evaluations) validation loss minus the "
                                             "reference's at the same LR, paired by seed over the seeds whose "
                                             "runs completed in both (diverged runs are the divergence test's), "
                                             "with its interval; with several LRs the LR whose test came closest "
                                             "to a difference (@ lr; every LR: the per-LR table)"),
    ("p (loss), p (best loss), p (ΔS), p (div.)",
     "Holm-adjusted p-values, over all the report's tests at once, of the paired t test of Δ loss = 0 (on the "
     "printed interval's scale: unadjusted, it is below 0.05 exactly when the interval excludes 0, so an interval "
     "that excludes 0 with an adjusted p above 0.05 is no finding; from 3 paired seeds), the exact "
     "permutation test of ΔS = 0 (swapping the two formats within seeds; only with more than one LR) and the "
     "two-sided exact test of equal divergence odds stratified by LR (exact conditional Cochran–Mantel–Haenszel); "
     "with n paired seeds and m tests the ΔS test cannot go below m x 2/2^n, and the headline says when a test "
     "cannot reach 0.05 and how large a loss difference the t test needs"),
    ("vs reference", "less / more stable when an adjusted p is below 0.05 in that direction (higher loss, larger "
                     "ΔS or more divergence is worse), mixed when both, in brackets the tests that decided it; "
                     "else no difference detected: the data do not show one (which is not evidence of equality; "
                     "the interval says how large a difference they leave open); too few seeds to test: no test "
                     "could reach 0.05 with these runs"),
]

DEFINITIONS += DOSE_DEFINITIONS  # the dose-response section's terms

WARNING_TEXT = (f"Does a per-step signal cross a threshold before a run diverges, and not in runs that complete? "
                f"Per learning rate and step, the threshold is the highest value the completed runs of the other "
                f"seeds had reached by that step (time-matched; a run's own seed left out, bit-identical runs "
                f"counted once); a diverged run is warned when its signal crossed it at least {DEFAULT_LEAD} steps "
                f"before its divergence; a completed run that crossed it at any step is a false alarm (each "
                f"completed run judged by the other seeds, so any number can be). AUC: over every threshold, how "
                f"well what the signal showed k steps before the divergence separates the diverged runs from "
                f"completed runs at the same learning rate and step (0.5: not at all, 1: always; with its 95% "
                f"score interval). Counts: exact 95% intervals. Signals measured every N steps warn at the first "
                f"measurement past the threshold; runs that diverged before a signal's first measurement do not count.")

WINDOWS_TEXT = ("AUC by lead: what each signal showed at least k steps before the divergence, against completed "
                "runs at the same step (95% interval; in brackets the diverged runs that had measured by then).")
WARNING_FIGURES = ("early_warning.png", "early_warning_roc.png")

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
.meta { color: #555; font-size: 0.9em; } .meta code { font-size: 0.95em; }
.headline { background: #f3f7fb; border-left: 4px solid #3a78b5; padding: 0.6em 1em; margin: 1em 0; }
.notes { background: #fff8e5; border-left: 4px solid #d9a400; padding: 0.4em 1em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.6em 0; }
th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #e3e3e3; text-align: right; white-space: nowrap; }
th { background: #f5f5f5; } td:first-child, th:first-child { text-align: left; }
tr.less td { color: #a33; } figure { margin: 1em 0; } figure img { max-width: 100%; }
figcaption { color: #555; font-size: 0.9em; } dl dt { font-weight: 600; } dl dd { margin: 0 0 0.5em 1.2em; }
"""

CAPTIONS = {
    "loss_curves.png": "Train loss per step, one panel per format; colour is the learning rate, one thin line "
                       "per seed; × marks where a run diverged (clipped to the top of the panel); a branch "
                       "(init.parent) starts at its circled branch point, its parent's curve up to there faint.",
    "final_loss_heatmap.png": "Final validation loss per format and learning rate (mean ± std over completed "
                              "seeds); hatched grey cells have no completed run.",
    "loss_vs_lr.png": "ℓ(η), the mean over seeds of the final validation loss capped at ℓ₀ = ln V (a "
                      "diverged run counts as ℓ₀), against the learning rate; error bars are 95% intervals over "
                      "seeds; dotted bars without caps are the seeds' range (2 seeds: no interval claimed).",
    "early_warning.png": "Each signal of every diverged run, as a ratio to its time-matched threshold (the "
                         "highest value the completed runs of the other seeds at its learning rate had reached "
                         "by that step; dashed line), against steps before the divergence: a line that crosses "
                         "1 early warns early.",
    "early_warning_roc.png": "ROC of each signal: the fraction of diverged runs caught (hit rate) against the "
                             "fraction of completed runs at the same learning rate and step let through (false-"
                             "alarm rate), over every threshold, judged on what the signal showed at least k "
                             "steps before the divergence (one line per k, AUC in the legend); the diagonal is "
                             "a signal that carries no warning.",
    "dose_response.png": "Dose-response per axis (mantissa bits at a fixed exponent, exponent bits at a fixed "
                         "mantissa, bits per element across recipes): top, the completed runs' final validation loss "
                         "against bits, one line per learning rate, with 95% intervals over seeds (dotted: the range of "
                         "2 seeds); the dashed line is the reference's loss and the shaded band reaches δ above it; ☆ "
                         "marks each LR's frontier, the grey dotted line the frontier at every LR, × a width whose every run diverged. Bottom: diverged "
                         "runs (%) with exact 95% intervals. Decisions use the seed-paired differences, not these bars.",
    "stability_vs_bits.png": "Diverged fraction and LR sensitivity against bits per element (a block format's "
                             "scales included: mxfp4 4.25, nvfp4 4.5), one line per exponent width or block "
                             "scaling, with 95% intervals (exact for the fraction, simultaneous t bounds for the "
                             "sensitivity, whose axis starts at 0; dotted bars without caps: the range of 2 seeds); dashed lines are formats of more than 16 bits.",
}


DIAGNOSTICS = ("Measured every diagnostics.every steps on the step's own batch and casts (README, \"Numerical "
               "diagnostics\"); values are means over a format's runs. saturated: fraction of a cast's elements "
               "clipped at the format's largest value (after its scale); flushed: fraction of its nonzero elements "
               "cast to zero; cast error: ‖q(x) − x‖ / ‖x‖; grad cosine: the run's gradient against an fp32 "
               "backward at the same weights and batch (1: identical); attention logit, log Z and the update / "
               "weight RMS ratio are Wortsman et al.'s instability proxies, which grow before a divergence.")


def diagnostics_display(report: Report) -> pd.DataFrame | None:
    """One row per format with diagnostics (`analysis.diagnostics.summary`), as strings; None without any."""
    if report.diagnostics.empty:
        return None
    return display_summary(summary(report.diagnostics, list(report.by_variant.variant)))


def _diagnostics_captions(report: Report, names) -> dict[str, str]:
    """The caption of each diagnostics figure among `names`."""
    captions = {"diagnostics_trends.png": "Gradient cosine and relative error against an fp32 backward (site "
                "\"model\": all parameters), the largest attention logit over the layers and the mean output "
                "log Z, against step; one line per format (mean over its runs)."}
    for i, variant in enumerate(report.by_variant.variant, 1):
        captions[f"diagnostics_sites_{i}.png"] = (
            f"{variant}: saturated and flushed fractions per layer and GEMM operand (mean over steps and runs; "
            "grey: no such cast, e.g. one cast serving two GEMMs), and the worst sites against step.")
    return {name: captions[name] for name in names if name in captions}


def sharpness_display(report: Report) -> dict[str, pd.DataFrame]:
    """Per metric (and parameters): a format x step table of 'mean ± std (n)'."""
    out = {}
    for (metric, params), group in report.sharpness_steps.groupby(["metric", "params"], sort=False):
        cells = group.assign(cell=[f"{m:.4g}" + (f" ± {s:.2g}" if n > 1 and pd.notna(s) else "") + f" ({n})"
                                   for m, s, n in zip(group["mean"], group["std"], group["n"])])
        table = cells.pivot(index="variant", columns="step", values="cell")
        table = table.reindex([v for v in report.by_variant.variant if v in table.index]).fillna("–")
        table.columns = [f"step {s}" for s in table.columns]
        out[f"{metric}" + (f" ({params})" if params else "")] = table.reset_index().rename(columns={"variant": "format"})
    return out


def _provenance(report: Report) -> dict[str, str]:
    runs = report.runs
    def values(column):
        found = sorted(set(str(v) for v in runs[column].dropna())) if column in runs else []
        return ", ".join(found) or "unknown"
    created = report.info.get("created")
    return {
        "store": report.store_path,
        "command": str(report.info.get("command") or ""),
        "sweep created": str(created)[:19] if created is not None else "",
        "runs": f"{len(runs)} ({', '.join(f'{n} {s}' for s, n in runs.status.value_counts().items())})",
        "model": values("model"),
        "precisionlab": values("git_rev") + f" (version {values('precisionlab_version')})",
        "torch": values("torch_version"),
        "report written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _html_table(df: pd.DataFrame, verdicts=None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = []
    for i, row in enumerate(df.astype(str).values.tolist()):
        cls = ' class="less"' if verdicts is not None and verdicts[i] == "less stable" else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def html_document(report: Report, images: dict[str, bytes]) -> str:
    """report.html: every table and every image in one file."""
    esc = html.escape
    meta = "".join(f"<div><b>{esc(k)}</b>: <code>{esc(v)}</code></div>" for k, v in _provenance(report).items())
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>precisionlab report: {esc(report.sweep)}</title><style>{CSS}</style></head><body>",
        f"<h1>Sweep <code>{esc(report.sweep)}</code></h1>", f'<div class="meta">{meta}</div>',
        *_dose_sentence(report, lambda text: f'<p class="headline">{esc(text)}</p>'),
        f'<p class="headline">{esc(report.headline())}</p>',
    ]
    if report.notes:
        parts.append('<div class="notes"><ul>' + "".join(f"<li>{esc(n)}</li>" for n in report.notes) + "</ul></div>")
    parts += ["<h2>Stability per format</h2>",
              _html_table(display_by_variant(report.by_variant), list(report.by_variant.verdict))]
    reasons = report.by_variant[report.by_variant.reason != ""]
    if len(reasons):
        parts.append("<ul>" + "".join(f"<li><b>{esc(r.variant)}</b>: {esc(r.reason)}</li>"
                                      for r in reasons.itertuples()) + "</ul>")
    parts += ["<h2>Per format and learning rate</h2>", _html_table(display_by_lr(report.by_lr))]
    if report.dose is not None and len(report.dose.frontiers):
        parts += ["<h2>Dose-response and frontier</h2>", _html_table(display_frontiers(report.dose))]
        if "dose_response.png" in images:
            parts.append(_html_figure("dose_response.png", images["dose_response.png"], CAPTIONS["dose_response.png"]))
    for name in ("final_loss_heatmap.png", "loss_vs_lr.png", "loss_curves.png", "stability_vs_bits.png"):
        if name in images:
            parts.append(_html_figure(name, images[name], CAPTIONS[name]))
    sharp = sharpness_display(report)
    if sharp:
        parts.append("<h2>Sharpness over training</h2>")
        for title, table in sharp.items():
            parts += [f"<h3>{esc(title)}: mean ± std (runs) per step</h3>", _html_table(table)]
        for name, data in images.items():
            if name.startswith("sharpness_"):
                parts.append(_html_figure(name, data, "Train loss (top) and sharpness (bottom) per format; "
                                                      "colour is the learning rate, one line per seed."))
    diagnostics = diagnostics_display(report)
    if diagnostics is not None:
        parts += ["<h2>Numerical diagnostics</h2>", f"<p>{esc(DIAGNOSTICS)}</p>", _html_table(diagnostics)]
        parts += [_html_figure(name, images[name], caption)
                  for name, caption in _diagnostics_captions(report, images).items()]
    if len(report.warning):
        parts += ["<h2>Early warning</h2>", f"<p>{esc(WARNING_TEXT)}</p>",
                  _html_table(display_warning(report.warning, DEFAULT_LEAD))]
        if len(report.warning_windows):
            parts += [f"<p>{esc(WINDOWS_TEXT)}</p>", _html_table(display_warning_windows(report.warning_windows))]
        parts += [_html_figure(name, images[name], CAPTIONS[name]) for name in WARNING_FIGURES if name in images]
    parts.append("<h2>Definitions</h2><dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in DEFINITIONS)
                 + "</dl>")
    parts.append(f'<p class="meta">Tables as CSV beside this file; per-run data: '
                 f"<code>precisionlab.store.ResultsStore({esc(repr(report.store_path))}).runs(sweep={esc(repr(report.sweep))})</code></p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _dose_sentence(report: Report, shape) -> list[str]:
    """The frontier sentence (analysis.dose) shaped for a document, or nothing when there is no bit axis."""
    return [shape(report.dose.sentence)] if report.dose is not None and report.dose.sentence else []


def _html_figure(name: str, data: bytes, caption: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return (f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~!#])")


def _md(value: object) -> str:
    """`value` as inline Markdown text that renders as itself: HTML characters as entities (no raw
    <script> or <img onerror>), Markdown's as backslash escapes (no emphasis, links, code spans or
    table cells of its own), one line."""
    text = " ".join(str(value).splitlines())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text)


def _md_code(value: object) -> str:
    """`value` as one Markdown code span, shown verbatim: its fence is one backtick longer than the
    longest run of backticks in it, so a backtick cannot end the span. A value with < or > is escaped
    text instead (`_md`): renderers that are not CommonMark may take HTML in a code span for HTML."""
    text = " ".join(str(value).splitlines())
    if "<" in text or ">" in text:
        return _md(text)
    fence = "`" * (1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    pad = " " if text.startswith("`") or text.endswith("`") or (text.startswith(" ") and text.strip()) else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def markdown_table(df: pd.DataFrame) -> str:
    """`df` as a Markdown table of escaped text (`_md`), the first column left-aligned."""
    lines = ["| " + " | ".join(_md(c) for c in df.columns) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(df.columns))) + "|"]
    lines += ["| " + " | ".join(_md(v) for v in row) + " |" for row in df.astype(str).values.tolist()]
    return "\n".join(lines)


def markdown_document(report: Report, image_names: list[str]) -> str:
    """report.md: the same tables, with the PNGs linked beside it."""
    parts = [f"# Sweep {_md_code(report.sweep)}", ""]
    parts += [f"- **{k}**: {_md_code(v)}" for k, v in _provenance(report).items()]
    parts += [""] + _dose_sentence(report, lambda text: f"**{_md(text)}**\n")
    parts += [f"**{_md(report.headline())}**", ""]
    parts += [f"> note: {_md(n)}" for n in report.notes] + ([""] if report.notes else [])
    parts += ["## Stability per format", "", markdown_table(display_by_variant(report.by_variant)), ""]
    parts += [f"- {_md(r.variant)}: {_md(r.reason)}" for r in report.by_variant.itertuples() if r.reason]
    parts += ["", "## Per format and learning rate", "", markdown_table(display_by_lr(report.by_lr)), ""]
    parts += [f"![{name}]({name})\n\n*{CAPTIONS[name]}*\n" for name in image_names if name in CAPTIONS
              and name != "dose_response.png"]
    if report.dose is not None and len(report.dose.frontiers):
        parts += ["## Dose-response and frontier", "", markdown_table(display_frontiers(report.dose)), ""]
        parts += [f"![{name}]({name})\n\n*{CAPTIONS[name]}*\n" for name in image_names if name == "dose_response.png"]
    sharp = sharpness_display(report)
    if sharp:
        parts += ["## Sharpness over training", ""]
        for title, table in sharp.items():
            parts += [f"### {_md(title)}: mean ± std (runs) per step", "", markdown_table(table), ""]
        parts += [f"![{name}]({name})\n" for name in image_names if name.startswith("sharpness_")]
    diagnostics = diagnostics_display(report)
    if diagnostics is not None:
        parts += ["## Numerical diagnostics", "", DIAGNOSTICS, "", markdown_table(diagnostics), ""]
        parts += [f"![{name}]({name})\n\n*{caption}*\n"
                  for name, caption in _diagnostics_captions(report, image_names).items()]
    if len(report.warning):
        parts += ["## Early warning", "", WARNING_TEXT, "", markdown_table(display_warning(report.warning, DEFAULT_LEAD)), ""]
        if len(report.warning_windows):
            parts += [WINDOWS_TEXT, "", markdown_table(display_warning_windows(report.warning_windows)), ""]
        parts += [f"![{name}]({name})\n\n*{CAPTIONS[name]}*\n" for name in WARNING_FIGURES if name in image_names]
    parts += ["## Definitions", ""] + [f"- **{k}**: {v}" for k, v in DEFINITIONS]
    return "\n".join(parts) + "\n"


def default_out(*sweeps: str) -> Path:
    """The default --out: reports/NAME, or reports/A-vs-B for two sweeps. A name `precisionlab
    sweep` would refuse (a store written by other means: '../x', '/etc') is never used as a path."""
    for name in sweeps:
        problem = sweep_name_problem(name)
        if problem:
            raise ReportError(f"{problem}; pass --out DIR to write its report")
    return Path("reports", "-vs-".join(sweeps))


def write(report: Report, out: str | os.PathLike) -> list[Path]:
    """Write every file of the report into the folder `out` (see `_write_files`); returns their paths."""
    images = {name: plots.png(fig) for name, fig in plots.figures(report).items()}
    files: dict[str, bytes | str] = {
        "report.html": html_document(report, images),
        "report.md": markdown_document(report, list(images)),
        "by_format.csv": report.by_variant.rename(columns={"variant": "format"}).to_csv(index=False),
        "by_format_lr.csv": report.by_lr.rename(columns={"variant": "format"}).to_csv(index=False),
        "runs.csv": report.runs.drop(columns=["config", "meta"], errors="ignore").to_csv(index=False),
        **images,
    }
    if report.dose is not None and len(report.dose.points):
        files["dose_response.csv"] = report.dose.points.rename(columns={"variant": "format"}).to_csv(index=False)
        files["frontier.csv"] = report.dose.frontiers.to_csv(index=False)
    if len(report.warning):
        files["early_warning.csv"] = report.warning.to_csv(index=False)
    if len(report.warning_windows):
        files["early_warning_windows.csv"] = report.warning_windows.to_csv(index=False)
    if not report.sharpness_steps.empty:
        files["sharpness.csv"] = report.sharpness_steps.rename(columns={"variant": "format"}).to_csv(index=False)
    if not report.diagnostics.empty:  # the heatmaps' numbers: per format and cast site, means over steps and runs
        sites = [site_means(report.diagnostics, v).assign(format=v) for v in report.by_variant.variant]
        table = pd.concat(sites, ignore_index=True)
        files["diagnostics.csv"] = table[["format", *table.columns[:-1]]].to_csv(index=False)
    return _write_files(files, out)


def comparison_html(a: Report, b: Report, table: pd.DataFrame, notes: list[str], images: dict[str, bytes]) -> str:
    """compare.html: the side-by-side table (`compare(a, b)`), what makes the sweeps differ
    (`compare_notes(a, b)`) and each sweep's own notes, each sweep's per-format table, the figure."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>precisionlab: {esc(a.sweep)} vs {esc(b.sweep)}</title><style>{CSS}</style></head><body>",
             f"<h1>Sweeps <code>{esc(a.sweep)}</code> and <code>{esc(b.sweep)}</code></h1>"]
    for report in (a, b):
        meta = "".join(f"<div><b>{esc(k)}</b>: <code>{esc(v)}</code></div>" for k, v in _provenance(report).items()
                       if k in ("store", "command", "runs", "model"))
        parts.append(f'<h3>{esc(report.sweep)}</h3><div class="meta">{meta}</div>')
    notes = notes + [f"{r.sweep}: {n}" for r in (a, b) for n in r.notes]
    if notes:
        parts.append('<div class="notes"><ul>' + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul></div>")
    parts += ["<h2>Side by side</h2>", _html_table(display_compare(table, a.sweep, b.sweep))]
    for report in (a, b):
        parts += [f"<h2>Stability per format: {esc(report.sweep)}</h2>", f'<p class="headline">{esc(report.headline())}</p>',
                  _html_table(display_by_variant(report.by_variant), list(report.by_variant.verdict))]
    if "stability_vs_bits.png" in images:
        parts.append(_html_figure("stability_vs_bits.png", images["stability_vs_bits.png"], CAPTIONS["stability_vs_bits.png"]))
    parts.append("<h2>Definitions</h2><dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in DEFINITIONS)
                 + "</dl></body></html>")
    return "\n".join(parts)


def write_comparison(a: Report, b: Report, table: pd.DataFrame, notes: list[str],
                     out: str | os.PathLike) -> list[Path]:
    """compare.html, compare.md, compare.csv and stability_vs_bits.png of sweeps `a` and `b` into
    `out`; `table` and `notes` are `compare(a, b)` and `compare_notes(a, b)`."""
    figure = plots.stability_vs_bits(a, b)
    images = {} if figure is None else {"stability_vs_bits.png": plots.png(figure)}
    markdown = [f"# Sweeps {_md_code(a.sweep)} and {_md_code(b.sweep)}", "",
                markdown_table(display_compare(table, a.sweep, b.sweep)), ""]
    for report in (a, b):
        markdown += [f"## {_md(report.sweep)}", "", f"**{_md(report.headline())}**", "",
                     markdown_table(display_by_variant(report.by_variant)), ""]
    markdown += [f"![{name}]({name})" for name in images]
    files = {"compare.html": comparison_html(a, b, table, notes, images), "compare.md": "\n".join(markdown) + "\n",
             "compare.csv": table.rename(columns={"variant": "format"}).to_csv(index=False), **images}
    return _write_files(files, out)


def _write_files(files: dict[str, bytes | str], out: str | os.PathLike) -> list[Path]:
    """Make `out` hold exactly `files`, all or nothing: render them into a staging folder beside
    `out`, then swap it with `out` in one atomic rename (renameat2 RENAME_EXCHANGE where the
    system has it). A kill leaves the whole old report or the whole new one, plus at most a
    staging folder, which the next report into the same parent folder removes (or renames back
    into place, see `_clean_stale`). `out` must be new or hold an earlier report: a report
    replaces its folder as a whole, so it never mixes into (or deletes) other files. An earlier
    report is recognised by the marker file every report writes (`MARKER`), never by file names
    alone; `out` may not be a symbolic link (its files would be another folder's)."""
    given = Path(os.path.abspath(out))
    if given.is_symlink():
        raise ReportError(f"--out {out} is a symbolic link; give the folder itself (a report replaces its folder)")
    for folder in given.parents:  # a dangling link would make mkdir create its target, wherever it points
        if folder.is_symlink() and not folder.exists():
            raise ReportError(f"--out {out}: {folder} is a symbolic link to a missing folder; choose an existing place")
    out = given.resolve()
    for name in files:  # names can come from the store (sharpness_METRIC.png): plain names inside `out` only
        if Path(name).name != name or name.startswith(".") or name in ("", "."):
            raise ReportError(f"refusing to write {name!r}: report files are plain names inside --out")
    if Path.cwd().resolve().is_relative_to(out):
        raise ReportError(f"--out {out} is the working directory or holds it; choose a folder of its own")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = "Not a directory" if isinstance(err, FileExistsError) else err.strerror
        raise ReportError(f"--out {out}: cannot create the folder ({reason}); choose a writable folder") from None
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise ReportError(f"--out {out}: its folder {out.parent} is not writable; choose a writable folder")
    _clean_stale(out)
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} is not a folder")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    others = [name for name in entries if not _old_report_entry(out / name)]
    if others:
        raise ReportError(f"--out {out} holds files that are not a report's ({', '.join(others[:3])}"
                          f"{', ...' if len(others) > 3 else ''}); a report replaces its folder as a whole: "
                          "choose a new folder")
    if entries and not _is_earlier_report(out):
        raise ReportError(f"--out {out} holds files precisionlab did not write (no {MARKER} in it); a report "
                          "replaces its folder as a whole: choose a new folder")
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging = out.parent / f".{out.name}.report-{tag}"
    try:
        staging.mkdir()
        (staging / MARKER).write_text(MARKER_TEXT, encoding="utf-8")
        for name, content in files.items():
            mode = "wb" if isinstance(content, bytes) else "w"
            with open(staging / name, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
                f.write(content)
        if out.exists():
            swap_folders(staging, out, out.parent / f".{out.name}.old-{tag}")  # `staging` now holds the old report
        else:
            os.rename(staging, out)
    except OSError as err:
        raise ReportError(f"--out {out}: writing the report failed ({err.strerror})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out / name for name in files]


# What a report folder may hold: every file `write` and `write_comparison` produce.
_REPORT_FILE = re.compile(r"(report|compare)\.(html|md)|(by_format|by_format_lr|runs|sharpness|early_warning|early_warning_windows|"
                          r"compare|diagnostics|dose_response|frontier)\.csv|(loss_curves|dose_response|final_loss_heatmap|loss_vs_lr|stability_vs_bits|"
                          r"early_warning|early_warning_roc|sharpness_[\w.-]+|"
                          r"diagnostics_[\w.-]+)\.png")


# Every report folder holds this file: what marks it as one the next report may replace.
MARKER = ".precisionlab-report"
MARKER_TEXT = "written by precisionlab report: the next report into this folder replaces it as a whole\n"
_OUR_PAGE = '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n<title>precisionlab'


def _old_report_entry(path: Path) -> bool:
    """A file an earlier report wrote, or the staging folder an earlier precisionlab left inside it."""
    if path.is_symlink():
        return False
    return ((_REPORT_FILE.fullmatch(path.name) is not None or path.name == MARKER) and path.is_file()
            or path.name.startswith(".report-"))


def _is_earlier_report(out: Path) -> bool:
    """`out` holds the marker, or is a report from before the marker (its HTML page is ours)."""
    if (out / MARKER).is_file():
        return (out / MARKER).read_text(encoding="utf-8", errors="replace") == MARKER_TEXT
    for page in ("report.html", "compare.html"):
        if (out / page).is_file():
            with open(out / page, encoding="utf-8", errors="replace") as f:
                return f.read(len(_OUR_PAGE)) == _OUR_PAGE
    return False


_STAGING = re.compile(r"\.(?P<out>.+)\.(?P<kind>report|old)-(?P<pid>\d+)-[0-9a-f]{8}")


def _clean_stale(out: Path) -> None:
    """Remove the staging folders beside `out` that a killed `report` left (their process is gone);
    an old report that a kill left outside `out` (see `runtime.swap_folders`) goes back into place."""
    for path in out.parent.iterdir():
        match = _STAGING.fullmatch(path.name)
        if not match or match["out"] != out.name or pid_alive(int(match["pid"])):
            continue
        if match["kind"] == "old" and not out.exists():
            os.rename(path, out)
        else:
            shutil.rmtree(path, ignore_errors=True)
