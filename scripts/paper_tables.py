"""The documentation's study tables (docs/reproducing.md), regenerated from the results store instead of written by hand.

    python scripts/paper_tables.py [--store results/precisionlab.db [--store OTHER ...]] [--write [docs/reproducing.md]]

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
The "effects" table: published small-scale effects (master weights, Wortsman et al. 2023's QK-LayerNorm
and z-loss, the FP4 orderings), one row each with its statistic, paired by seed, and a verdict, one of
  reproduces            the test finds the claimed direction (paired t on the final loss of the runs both
                        completed, the report's loss test: a diverged run is the divergence test's, never
                        counted at ln V; Holm-adjusted over the study's tests; the 95% interval of ΔS
                        below 0 for LR sensitivity; the exact divergence test stratified by LR, one-sided,
                        for a divergence claim, and for E2M1's "fails" beside its loss test; the interval
                        below +MARGIN for a "not worse" claim);
  contradicted          the test finds the opposite direction;
  not detected          the interval covers 0 and rules out an effect in the claimed direction larger
                        than MARGIN (0.02 nats/byte): at this scale the effect, if any, is small; for a
                        divergence claim, the runs diverge and the exact test's p is not below α;
  not resolvable at this scale  the interval covers 0 and also effects beyond MARGIN, or what the claim
                        is about does not happen here (no run diverges), or too few seeds for an interval.
A study whose sweep the stores lack is listed with the command that runs it; with several --store, each
study is read from the first store that holds its sweep. With --write, each block of the page (default docs/reproducing.md) between
`<!-- tables:NAME -->` and `<!-- /tables:NAME -->` is replaced by the table NAME (`paper-claims`,
`paper`, `fp4`, `fp8_recipes`, `master_weights`, `effects`, `wortsman_qk`, `wortsman_zloss`,
`fp4_signs`), so the page says what the stores hold; a study none of the stores holds keeps its block.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

from precisionlab.analysis.dose import decide
from precisionlab.analysis.estimates import seed_matrix
from precisionlab.analysis.labels import display_label, identical_to
from precisionlab.analysis.render import markdown_table
from precisionlab.analysis.report import ReportError, build
from precisionlab.analysis.stats import (CI, holm, holm_reachable, interval_text, paired_sensitivity,
                                         stratified_exact_p)
from precisionlab.analysis.tables import display_by_variant
from precisionlab.analysis.verdicts import ALPHA, detectability, divergence_strata, paired_loss_test
from precisionlab.store import DEFAULT_STORE_PATH, DONE, ResultsStore, StoreError

STUDIES = {  # sweep name -> the command that runs it
    "paper": "scripts/reproduce_paper.sh",
    "fp4": "precisionlab sweep sweep=fp4 --jobs 2",
    "fp8_recipes": "precisionlab sweep sweep=fp8_recipes --jobs 2",
    "master_weights": "precisionlab sweep sweep=master_weights --jobs 1 train.threads=1",
    "wortsman_qk": "precisionlab sweep sweep=wortsman_qk --jobs 1 train.threads=1",
    "fp4_signs": "precisionlab sweep sweep=fp4_signs --jobs 1 train.threads=1",
    "wortsman_zloss": "precisionlab sweep sweep=wortsman_zloss --jobs 1 train.threads=1",
}  # scripts/reproduce_effects.sh runs the last four
REFERENCE = "e8m7"  # the paper's BF16 inputs
MARGIN = 0.02  # nats/byte: the smallest effect the effects table calls an effect (module docstring)


def _iv(x: float, low: float, high: float, kind: str, spec: str = "+.3f") -> str:
    return interval_text(x, low, high, kind if isinstance(kind, str) else "", spec)


def _row(table: pd.DataFrame, variant: str) -> pd.Series | None:
    rows = table[table.variant == variant]
    return rows.iloc[0] if len(rows) else None


def claims(report) -> pd.DataFrame:
    """The paper's claims, each with what this sweep measured and a verdict (module docstring)."""
    table, runs = report.by_variant, report.runs
    reach = detectability(table)
    unreachable = " ".join(reach)
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
                   "not testable here: " + next(line for line in reach if "divergence test" in line)
                   if "divergence test" in unreachable else
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
        verdict = "not testable here: " + next(line for line in reach if "LR-sensitivity test" in line)
    else:
        verdict = "not detected: every interval of ΔS covers 0 or lies below it"
    rows.append(("fewer mantissa bits raise LR sensitivity", measured, verdict))

    if "e7m7" in set(table.variant):
        if identical_to(report.runs, "e7m7", REFERENCE):
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
        whole = _wholly_diverged(runs)
        rows.append(("sharpness rises before divergence",
                     f"logit sharpness, AUC ≥ 10 steps ahead {_iv(s.auc, s.auc_low, s.auc_high, CI, '.2f')} "
                     f"(diverged vs completed runs at the same LR and step); warned ≥ 10 steps ahead {int(s.warned)}/"
                     f"{int(s.calibrated)}, false alarms {int(s.false_alarms)}/{int(s.completed)}",
                     # every diverged run in a format and LR whose seeds all diverged: the signal may tell the
                     # formats apart from the first step, which is not a warning before a divergence
                     f"not testable here: every diverged run is of a format and LR where all seeds diverged "
                     f"({whole}), so the AUC compares formats, not runs before and without a divergence" if whole else
                     "not detected: the AUC's interval covers 0.5" if covers else
                     ("reproduces" if s.auc_low > 0.5 else "not detected: the signal is lower before divergence")))

    if ref is not None:
        others = [f"{v.upper()} {_iv(r.best_loss_diff, r.best_loss_diff_low, r.best_loss_diff_high, r.best_loss_diff_interval)}"
                  for v in mantissa if (r := _row(table, v)) is not None]
        by_loss = [v.upper() for v in mantissa if (r := _row(table, v)) is not None and "loss" in str(r.decided_by)]
        rows.append(("the training itself",
                     f"{REFERENCE.upper()} at its best LR ({ref.best_lr:g}): "
                     f"{_iv(ref.best_lr_loss, ref.best_lr_loss_low, ref.best_lr_loss_high, ref.best_lr_loss_interval, '.3f')} "
                     f"nats/byte; paired difference at each format's best LR: " + "; ".join(others),
                     (f"a loss difference at some LR (paired t, Holm over the report's family): {', '.join(by_loss)}"
                      if by_loss else "no loss difference detected at any LR (paired t, Holm over the report's family)")))
    return pd.DataFrame(rows, columns=["the paper's claim", "here", "verdict"])


def _wholly_diverged(runs: pd.DataFrame) -> str:
    """'E4M7 at 0.003, 0.03, …' when every diverged run is of a (variant, LR) whose finished runs all
    diverged, else ''."""
    done = runs[runs.status.isin(DONE)]
    cells = done.groupby(["variant", "lr"]).status.agg(lambda s: (s == "diverged").mean())
    diverged = cells[cells > 0]
    if diverged.empty or (diverged < 1).any():
        return ""
    by_variant = diverged.reset_index().groupby("variant", sort=False).lr.agg(lambda lrs: ", ".join(f"{lr:g}" for lr in lrs))
    return "; ".join(f"{v.upper()} at LR {lrs}" for v, lrs in by_variant.items())


def _variant(runs: pd.DataFrame, **where) -> str | None:
    """The variant label of the runs whose config has each value at its dotted key (optim__z_loss=0
    for optim.z_loss): None unless exactly one variant matches."""
    def value(config, dotted):
        for part in dotted.split("__"):
            config = config.get(part) if isinstance(config, dict) else None
        return config
    match = [all(value(c, k) == v for k, v in where.items()) for c in runs.config]
    found = runs[match].variant.unique()
    return str(found[0]) if len(found) == 1 else None


def _loss_diff(runs: pd.DataFrame, variant: str, reference: str) -> dict:
    """Final loss ℓ of `variant` minus `reference`, paired by LR and seed over the runs both completed:
    the report's loss test (verdicts.paired_loss_test; diverged runs are the divergence test's, never
    counted at ln V), here pooled over the LRs. paired_difference's fields and the paired t p (`p_t`)."""
    return paired_loss_test(runs[runs.variant == variant], runs[runs.variant == reference], "capped_loss", ("lr", "seed"))


def _fails(runs: pd.DataFrame, variant: str) -> str:
    mine = runs[(runs.variant == variant) & runs.status.isin(DONE)]
    failed = int(mine.outcome.isin(["diverged", "did not converge"]).sum())
    return f"{failed}/{len(mine)} runs diverged or did not converge"


def _decide(d: dict, p: float, sign: int) -> str:
    """The verdict (module docstring) of a difference d whose claim has the sign `sign` (-1: the
    variant's loss is claimed lower), tested at p (Holm-adjusted; NaN: decided by the interval)."""
    iv = _iv(d["diff"], d["low"], d["high"], d["kind"])
    if d["kind"] != CI:
        return f"not resolvable at this scale: {d['n']} paired seeds give no confidence interval"
    significant = p < ALPHA if p == p else (d["low"] > 0 or d["high"] < 0)
    if significant:
        return "reproduces" if sign * d["diff"] > 0 else f"contradicted: {iv} lies on the other side of 0"
    reach = d["high"] if sign > 0 else -d["low"]  # the largest effect in the claimed direction left open
    if reach <= MARGIN:
        return f"not detected: {iv} covers 0 and excludes an effect beyond {MARGIN:g} nats/byte"
    return f"not resolvable at this scale: {iv} covers 0 and effects up to {reach:.3f} nats/byte"


def _diff_text(d: dict, p: float | None = None) -> str:
    text = f"Δ {_iv(d['diff'], d['low'], d['high'], d['kind'])}"
    return text + (f" (paired t over {d['n']} seeds, Holm p = {p:.2g})" if p is not None and p == p else "")


def master_weights_rows(report) -> list[tuple[str, str, str]]:
    runs = report.runs
    fp32, rne, sr = (_variant(runs, optim__master_format=f, optim__master_rounding=r) for f, r in
                     (("fp32", "nearest_even"), ("bf16", "nearest_even"), ("bf16", "stochastic")))
    if None in (fp32, rne, sr):
        return [("bf16 weights without an fp32 master copy stall under round-to-nearest, recover under stochastic rounding",
                 "the sweep lacks one of fp32 master / bf16 RNE / bf16 SR", "not testable here")]
    tests = [_loss_diff(runs, rne, fp32), _loss_diff(runs, sr, rne), _loss_diff(runs, sr, fp32)]
    p = holm([t["p_t"] for t in tests])
    stall, recover = _decide(tests[0], p[0], +1), _decide(tests[1], p[1], -1)
    both = "reproduces" if stall == recover == "reproduces" else f"stall: {stall}; recovery: {recover}"
    return [("bf16 weights without an fp32 master copy stall under round-to-nearest, recover under stochastic rounding",
             f"final loss, bf16 RNE − fp32 master: {_diff_text(tests[0], p[0])}; bf16 SR − bf16 RNE: "
             f"{_diff_text(tests[1], p[1])}; bf16 SR − fp32 master: {_diff_text(tests[2], p[2])}", both)]


def qk_rows(report) -> list[tuple[str, str, str]]:
    runs, claim = report.runs, "QK-LayerNorm lowers LR sensitivity at high LR (Wortsman et al. 2023)"
    off, on = _variant(runs, model__qk_norm=False), _variant(runs, model__qk_norm=True)
    if off is None or on is None:
        return [(claim, "the sweep lacks runs with and without model.qk_norm", "not testable here")]
    text, verdict = _sensitivity(runs, on, off, "qk_norm", "none")
    per_lr = [(lr, _loss_diff(runs[runs.lr == lr], on, off)) for lr in sorted(runs[runs.status.isin(DONE)].lr.unique())]
    text += ("; final loss qk_norm − none at each LR (descriptive, not the claim's test): " +
             "; ".join(f"{lr:g} {_iv(d['diff'], d['low'], d['high'], d['kind'])}" for lr, d in per_lr))
    return [(claim, text + _attention_logits(report, {"none": off, "qk_norm": on}), verdict)]


def _attention_logits(report, variants: dict[str, str]) -> str:
    """The largest attention logit q·kᵀ/√D at each run's last diagnostic step (largest over layers),
    mean over seeds per LR: what Wortsman et al. see grow without QK-LayerNorm (descriptive)."""
    diag = report.diagnostics
    if diag.empty or not (diag.name == "attn_logit_max").any():
        return ""
    rows = diag[diag.name == "attn_logit_max"]
    last = rows[rows.step == rows.groupby("run_id").step.transform("max")]
    per_run = last.groupby(["variant", "lr", "run_id"]).value.max().groupby(["variant", "lr"]).mean()
    parts = [f"{name} " + ", ".join(f"{per_run[v, lr]:.0f}" for lr in sorted(per_run[v].index))
             for name, v in variants.items() if v in per_run.index.get_level_values(0)]
    lrs = ", ".join(f"{lr:g}" for lr in sorted(last.lr.unique()))
    return f"; largest attention logit at the last step (mean over seeds) at LR {lrs}: " + "; ".join(parts)


def _sensitivity(runs: pd.DataFrame, variant: str, reference: str, name: str, ref_name: str) -> tuple[str, str]:
    """ΔS = S(variant) − S(reference), paired by seed over the reference's LR grid: the text and the verdict."""
    lrs = sorted(runs[(runs.variant == reference) & runs.status.isin(DONE)].lr.unique())
    mine, theirs = seed_matrix(runs, variant, lrs), seed_matrix(runs, reference, lrs)
    seeds = mine.index.intersection(theirs.index)
    d = paired_sensitivity(mine.loc[seeds].to_numpy(), theirs.loc[seeds].to_numpy())
    s = {v: float(m.loc[seeds].mean().pipe(lambda c: (c - c.min()).mean())) for v, m in ((name, mine), (ref_name, theirs))}
    text = (f"LR sensitivity over LR {', '.join(f'{lr:g}' for lr in lrs)}: {ref_name} {s[ref_name]:.3f}, {name} "
            f"{s[name]:.3f}; ΔS {_iv(d['diff'], d['low'], d['high'], d['kind'])} over {d['n']} paired seeds")
    return text, _decide(d, float("nan"), -1)


def zloss_rows(report) -> list[tuple[str, str, str]]:
    runs, claim = report.runs, "without weight decay, output logits diverge at high LR; z-loss prevents it (Wortsman et al. 2023)"
    off = _variant(runs, optim__z_loss=0.0)
    on = [v for v in runs.variant.unique() if v != off]
    if off is None or len(on) != 1:
        return [(claim, "the sweep lacks runs with and without optim.z_loss", "not testable here")]
    strata = divergence_strata(runs, off, on[0])
    k, n = sum(s[0] for s in strata), sum(s[1] for s in strata)
    kz, nz = sum(s[2] for s in strata), sum(s[3] for s in strata)
    lrs = ", ".join(f"{lr:g}" for lr in sorted(runs.lr.unique()))
    d = _loss_diff(runs, on[0], off)
    text = (f"at LR {lrs}: diverged without z-loss {k}/{n}, with z-loss {kz}/{nz}; final loss of the runs both "
            f"completed, z-loss − none: {_diff_text(d)} over {d['n']} paired runs")
    if k == 0:
        return [(claim, text, f"not resolvable at this scale: no run without z-loss diverged (0/{n})")]
    p = stratified_exact_p(strata, "greater")  # the runs without z-loss diverge more
    text += f"; exact test stratified by LR, one-sided p = {p:.2g}"
    return [(claim, text, "reproduces" if p < ALPHA and kz < k else
             f"not detected: with z-loss {kz}/{nz} diverged against {k}/{n} without (exact p = {p:.2g} ≥ α = {ALPHA:g})")]


def fp4_rows(report) -> list[tuple[str, str, str]]:
    runs, rows = report.runs, []
    name = {p: _variant(runs, precision__name=p) for p in ("bf16", "e2m1", "mxfp4", "mxfp4_sr", "nvfp4", "nvfp4_no_sr")}
    pairs = [("E2M1 without scaling fails", "e2m1", "bf16", +1),
             ("stochastic rounding of the gradients beats round-to-nearest: MXFP4", "mxfp4_sr", "mxfp4", -1),
             ("stochastic rounding of the gradients beats round-to-nearest: NVFP4", "nvfp4", "nvfp4_no_sr", -1)]
    pairs = [p for p in pairs if name[p[1]] and name[p[2]]]
    tests = [_loss_diff(runs, name[a], name[b]) for _, a, b, _ in pairs]
    # e2m1's diverged runs are not in its loss test (as in the report): they are its divergence test's
    strata = divergence_strata(runs, name["e2m1"], name["bf16"]) if pairs and pairs[0][1] == "e2m1" else []
    p_diverged = stratified_exact_p(strata, "greater") if strata else float("nan")
    # one Holm family; the divergence test joins it once a run of either diverged (before, it cannot reach α)
    anything = any(k + kr for k, _, kr, _ in strata)
    adjusted = holm_reachable([t["p_t"] for t in tests] + [p_diverged],
                              [0.0] * len(tests) + [0.0 if anything else 1.0]) if tests else []
    for (claim, a, b, sign), d, p in zip(pairs, tests, adjusted):
        verdict = _decide(d, p, sign)
        text = f"final loss, {a} − {b}: {_diff_text(d, p)}"
        if a == "e2m1":  # "fails": every run diverged or stalled, beyond being worse
            k, n, kr, nr = (sum(s[i] for s in strata) for i in range(4))
            if k:
                text += (f"; diverged e2m1 {k}/{n}, bf16 {kr}/{nr} (exact test stratified by LR, one-sided, "
                         f"Holm p = {adjusted[-1]:.2g})")
                verdict = "reproduces" if adjusted[-1] < ALPHA else verdict
            text += f"; e2m1 {_fails(runs, name[a])}, bf16 {_fails(runs, name[b])}"
            fails = runs[(runs.variant == name[a]) & runs.status.isin(DONE)].outcome.isin(["diverged", "did not converge"])
            if verdict == "reproduces" and not fails.all():
                verdict = "trains, worse than bf16 (not every run fails)"
        rows.append((claim, text, verdict))
    if name["nvfp4"] and name["mxfp4"]:  # the frontier's rule (dose.decide), paired by LR and seed
        sides = [runs[runs.variant == name[v]] for v in ("nvfp4", "mxfp4")]
        done = [g[g.status == "completed"].groupby(["lr", "seed"]).capped_loss.mean().to_dict() for g in sides]
        diverged = [set(zip(g[g.status == "diverged"].lr, g[g.status == "diverged"].seed)) for g in sides]
        m = decide(done[0], diverged[0], done[1], diverged[1], MARGIN)
        verdict = {"within": "reproduces", "beyond": f"contradicted: worse by more than {MARGIN:g}",
                   "diverged": f"contradicted: nvfp4 diverged in {m['unmatched']} run(s) whose mxfp4 twin did not"}.get(
            m["decision"], f"not resolvable at this scale: the interval reaches past +{MARGIN:g}")
        rows.append((f"NVFP4 is not worse than MXFP4 (margin {MARGIN:g} nats/byte)",
                     f"final loss, nvfp4 − mxfp4: {_diff_text(m)} over {m['n']} paired seeds", verdict))
    return rows


EFFECTS = {"master_weights": master_weights_rows, "wortsman_qk": qk_rows, "fp4_signs": fp4_rows,
           "wortsman_zloss": zloss_rows}  # study -> its rows of the effects table


def effects(reports: dict) -> pd.DataFrame:
    """The effects table from the reports of the studies at hand (study -> Report); a missing study
    is one row naming the command that runs it."""
    rows = []
    for study, make in EFFECTS.items():
        if study in reports:
            rows += [(claim, f"{study}: {here}", verdict) for claim, here, verdict in make(reports[study])]
        else:
            rows.append((f"sweep {study}", f"not in the store: {STUDIES[study]} runs it", "not run"))
    return pd.DataFrame(rows, columns=["effect", "here (paired by seed)", "verdict"])


def per_format(report) -> pd.DataFrame:
    shown = display_by_variant(report.by_variant)
    shown["format"] = [display_label(v) for v in report.by_variant.variant]
    return shown


def blocks(stores) -> dict[str, str]:
    """Every table this script makes, by block name, as Markdown; each study read from the first of
    `stores` (one ResultsStore or several) that holds its sweep."""
    stores = [stores] if isinstance(stores, ResultsStore) else list(stores)
    holder = {}
    for store in stores:
        for name in store.sweeps().name:
            holder.setdefault(name, store)
    out, reports = {}, {}
    for study, command in STUDIES.items():
        if study not in holder:
            out[study] = f"*Sweep `{study}` is not in this store: `{command}` runs it, then this script.*"
            continue
        report = reports[study] = build(holder[study], study)
        runs = report.runs
        head = (f"`precisionlab report --sweep {study}`: {len(runs)} runs "
                f"({', '.join(f'{n} {s}' for s, n in runs.status.value_counts().items())}); "
                f"Holm-adjusted α = {ALPHA:g}. {report.headline()}")
        out[study] = head + "\n\n" + markdown_table(per_format(report))
        if study == "paper":
            out["paper-claims"] = markdown_table(claims(report))
    out["effects"] = markdown_table(effects(reports))
    return out


# The page whose <!-- tables:NAME --> blocks --write replaces by default.
PAGE = Path(__file__).resolve().parents[1] / "docs" / "reproducing.md"


def write(readme: Path, tables: dict[str, str]) -> list[str]:
    """Replace the page's marked blocks with `tables`; returns the names replaced."""
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
    parser.add_argument("--store", action="append", help="results store (path or URL); repeat it to read the "
                        f"studies from several stores, the first holding a sweep wins (default {DEFAULT_STORE_PATH})")
    parser.add_argument("--write", type=Path, nargs="?", const=PAGE, metavar="PAGE",
                        help=f"page to update in place (its <!-- tables:NAME --> blocks; default {PAGE})")
    args = parser.parse_args(argv)
    stores = []
    try:
        for path in args.store or [DEFAULT_STORE_PATH]:
            stores.append(ResultsStore(path, read_only=True, create=False))
        tables = blocks(stores)
    except (StoreError, ValueError, ReportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        for store in stores:
            store.close()
    for name, body in tables.items():
        print(f"## {name}\n\n{body}\n")
    if args.write:  # a study the stores lack keeps its block on the page (the tables of an earlier run)
        found = {name: body for name, body in tables.items() if not body.startswith("*Sweep `")}
        print(f"updated in {args.write}: {', '.join(write(args.write, found)) or 'no marked block'}"
              + (f"; kept (not in the stores): {', '.join(sorted(set(tables) - set(found)))}" if set(tables) - set(found)
                 else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
