"""The README's study tables, regenerated from the results store instead of written by hand.

    python scripts/paper_tables.py [--store results/precisionlab.db] [--write README.md]

For each study (a sweep of that name in the store) it prints the per-format table of `precisionlab
report` in Markdown, and for the bit-reduction study (`paper`) the "what reproduces" table: each
claim of Lee et al. 2024 ("To FP8 and Back Again") with the statistic and interval that tests it
here and a verdict, one of
  reproduces            the report's test (Holm-adjusted over its family) finds the claimed direction;
  not detected          the test could have found it (its smallest reachable adjusted p is below α)
                        and did not: the interval says how large an effect the data leave open;
  not testable here     the data cannot test it, with the reason (no run diverged; the variant is
                        bit-identical to the reference; too few paired seeds for the family's Holm
                        adjustment to reach α).
A study whose sweep the store lacks is listed with the command that runs it. With --write, each
block of the README between `<!-- tables:NAME -->` and `<!-- /tables:NAME -->` is replaced by the
table NAME (`paper-claims`, `paper`, `fp4`, `fp8_recipes`, `master_weights`), so the README says
what the store holds.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

from precisionlab.analysis.labels import display_label
from precisionlab.analysis.render import markdown_table
from precisionlab.analysis.report import ALPHA, ReportError, build, detectability
from precisionlab.analysis.stats import CI, interval_text
from precisionlab.analysis.tables import display_by_variant
from precisionlab.store import DEFAULT_STORE_PATH, ResultsStore, StoreError

STUDIES = {  # sweep name -> the command that runs it
    "paper": "scripts/reproduce_paper.sh",
    "fp4": "precisionlab sweep sweep=fp4 --jobs 2",
    "fp8_recipes": "precisionlab sweep sweep=fp8_recipes --jobs 2",
    "master_weights": "precisionlab sweep sweep=master_weights --jobs 1 train.threads=1",
}
REFERENCE = "e8m7"  # the paper's BF16 inputs


def _iv(x: float, low: float, high: float, kind: str, spec: str = "+.3f") -> str:
    return interval_text(x, low, high, kind if isinstance(kind, str) else "", spec)


def _row(table: pd.DataFrame, variant: str) -> pd.Series | None:
    rows = table[table.variant == variant]
    return rows.iloc[0] if len(rows) else None


def _identical_to_reference(report, variant: str) -> bool:
    """Every run of `variant` has the final and initial loss of the reference's run at its LR and seed."""
    runs = report.runs.set_index(["variant", "lr", "seed"])[["final_val_loss", "initial_loss"]].astype(float)
    if variant not in runs.index.get_level_values(0) or REFERENCE not in runs.index.get_level_values(0):
        return False
    mine, ref = runs.loc[variant], runs.loc[REFERENCE]
    both = mine.index.intersection(ref.index)
    return len(both) == len(mine) and bool((mine.loc[both].fillna(-1) == ref.loc[both].fillna(-1)).all().all())


def claims(report) -> pd.DataFrame:
    """The paper's claims, each with what this sweep measured and a verdict (module docstring)."""
    table, runs = report.by_variant, report.runs
    unreachable = " ".join(detectability(table))
    mantissa = [v for v in table.variant if re.fullmatch(r"e8m[0-6]", v)]
    diverged = int(table.diverged.sum())
    rows = []

    counts = ", ".join(f"{v.upper()} {int(r.diverged)}/{int(r.finished)}" for v in [REFERENCE, *mantissa]
                       if (r := _row(table, v)) is not None)
    if diverged == 0:
        verdict = (f"not testable here: no run of the grid diverged ({len(runs)} runs; every one ended below "
                   "ln V, the blow-ups at the highest LR came back)")
    else:
        worse = [v for v in mantissa if (r := _row(table, v)) is not None and r.p_diverged_holm < ALPHA
                 and r.diverged_frac > _row(table, REFERENCE).diverged_frac]
        p = ", ".join(f"{v.upper()} p = {_row(table, v).p_diverged_holm:.2g}" for v in mantissa)
        verdict = (f"reproduces ({', '.join(w.upper() for w in worse)})" if worse else
                   "not testable here: " + unreachable if "divergence test" in unreachable else
                   f"not detected (exact test stratified by LR, Holm: {p})")
    rows.append(("fewer mantissa bits diverge more", f"diverged over the grid: {counts}", verdict))

    parts, any_up = [], False
    for v in mantissa:
        r = _row(table, v)
        parts.append(f"{v.upper()} {_iv(r.sensitivity_diff, r.sensitivity_diff_low, r.sensitivity_diff_high, r.sensitivity_diff_interval)}"
                     f" (p = {r.p_sensitivity_holm:.2g})")
        any_up |= r.p_sensitivity_holm < ALPHA and r.sensitivity_diff > 0
    ref = _row(table, REFERENCE)
    measured = (f"{REFERENCE.upper()} LR sensitivity {_iv(ref.lr_sensitivity, ref.lr_sensitivity_low, ref.lr_sensitivity_high, ref.lr_sensitivity_interval, '.3f')}; "
                f"ΔS vs {REFERENCE.upper()}: " + "; ".join(parts)) if ref is not None else "no reference runs"
    if any_up:
        verdict = "reproduces"
    elif "LR-sensitivity test" in unreachable:
        verdict = "not testable here: " + unreachable.split(" With these runs")[0]
    else:
        verdict = "not detected: every interval of ΔS covers 0 or lies below it"
    rows.append(("fewer mantissa bits raise LR sensitivity", measured, verdict))

    if "e7m7" in set(table.variant):
        if _identical_to_reference(report, "e7m7"):
            rows.append(("E7M7 (clipped exponent) fails", "bit-identical to E8M7 in every run (same losses at every LR and seed)",
                         "not testable here: the tiny model's GEMM inputs never leave E7's range (2^-62 … 2^64), "
                         "so clipping the exponent changes no bit"))
        else:
            r = _row(table, "e7m7")
            rows.append(("E7M7 (clipped exponent) fails", f"diverged {int(r.diverged)}/{int(r.finished)}; "
                         f"ΔS {_iv(r.sensitivity_diff, r.sensitivity_diff_low, r.sensitivity_diff_high, r.sensitivity_diff_interval)}",
                         r.verdict))

    warn = report.warning
    sharp = warn[warn.signal.str.startswith("sharpness")] if len(warn) else warn
    if diverged == 0:
        rows.append(("sharpness rises before divergence", "no run diverged: nothing to warn of",
                     "not testable here: no divergence at this scale"))
    elif sharp.empty:
        rows.append(("sharpness rises before divergence", "no sharpness recorded during training",
                     "not testable here: run the sweep with sharpness.every"))
    else:
        s = sharp.iloc[0]
        covers = s.auc_low <= 0.5 <= s.auc_high
        rows.append(("sharpness rises before divergence",
                     f"logit sharpness, AUC ≥ 10 steps ahead {_iv(s.auc, s.auc_low, s.auc_high, CI, '.2f')} "
                     f"(diverged vs completed runs at the same LR and step); warned ≥ 10 steps ahead {int(s.warned)}/"
                     f"{int(s.calibrated)}, false alarms {int(s.false_alarms)}/{int(s.completed)}",
                     "not detected: the AUC's interval covers 0.5" if covers else
                     ("reproduces" if s.auc_low > 0.5 else "not detected: the signal is lower before divergence")))

    if ref is not None:
        others = [f"{v.upper()} {_iv(r.best_loss_diff, r.best_loss_diff_low, r.best_loss_diff_high, r.best_loss_diff_interval)}"
                  for v in mantissa if (r := _row(table, v)) is not None]
        rows.append(("the training itself",
                     f"{REFERENCE.upper()} at its best LR ({ref.best_lr:g}): "
                     f"{_iv(ref.best_lr_loss, ref.best_lr_loss_low, ref.best_lr_loss_high, ref.best_lr_loss_interval, '.3f')} "
                     f"nats/byte; paired difference at each format's best LR: " + "; ".join(others),
                     "all formats train (descriptive: the loss at the best LR is not among the report's tests)"))
    return pd.DataFrame(rows, columns=["the paper's claim", "here", "verdict"])


def per_format(report) -> pd.DataFrame:
    shown = display_by_variant(report.by_variant)
    shown["format"] = [display_label(v) for v in report.by_variant.variant]
    return shown


def blocks(store: ResultsStore) -> dict[str, str]:
    """Every table this script makes, by block name, as Markdown."""
    names = set(store.sweeps().name)
    out = {}
    for study, command in STUDIES.items():
        if study not in names:
            out[study] = f"*Sweep `{study}` is not in this store: `{command}` runs it, then this script.*"
            continue
        report = build(store, study)
        runs = report.runs
        head = (f"`precisionlab report --sweep {study}`: {len(runs)} runs "
                f"({', '.join(f'{n} {s}' for s, n in runs.status.value_counts().items())}); "
                f"Holm-adjusted α = {ALPHA:g}. {report.headline()}")
        out[study] = head + "\n\n" + markdown_table(per_format(report))
        if study == "paper":
            out["paper-claims"] = markdown_table(claims(report))
    return out


def write(readme: Path, tables: dict[str, str]) -> list[str]:
    """Replace README's marked blocks with `tables`; returns the names replaced."""
    text, done = readme.read_text(), []
    for name, body in tables.items():
        pattern = re.compile(rf"(<!-- tables:{re.escape(name)} -->\n).*?(<!-- /tables:{re.escape(name)} -->)", re.S)
        if pattern.search(text):
            text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
            done.append(name)
    readme.write_text(text)
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default=DEFAULT_STORE_PATH, help="results store (path or URL)")
    parser.add_argument("--write", type=Path, help="README to update in place (its <!-- tables:NAME --> blocks)")
    args = parser.parse_args(argv)
    try:
        store = ResultsStore(args.store, read_only=True, create=False)
    except (StoreError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        tables = blocks(store)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        store.close()
    for name, body in tables.items():
        print(f"## {name}\n\n{body}\n")
    if args.write:
        print(f"updated in {args.write}: {', '.join(write(args.write, tables)) or 'no marked block'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
