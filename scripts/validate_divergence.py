"""How well an early-stop divergence rule predicts how a run ends, on curves run to the end.

    python scripts/validate_divergence.py --store PATH [--sweep NAME] [--rule median,factor]
                                          [--window 20] [--margin 0] [--factor 1]

The store's runs must have run to the end (`train.divergence.rule=none`: they stop only on NaN/Inf).
Each run is labelled by the ground truth of its whole train curve (precisionlab.train.outcomes):
  diverged   a train loss is NaN/Inf, or the median of its last 20 train losses (END_WINDOW) is above
             ln V (V = model.vocab_size, the uniform-prediction loss): it ended no better than an
             untrained model (the definition the training loop applies at the end of a run);
  stalled    otherwise, if that median is above (1 - STALLED) x ln V: it ended finite without learning
             much (e.g. a tiny learning rate);
  completed  the rest.
Then each rule is replayed on the same curve (`precisionlab.train.outcomes.replay`, exactly what the
training loop decides step by step): its prediction is "diverged" where it stops the run early (or
its end-of-run judgement says so), else the class the full curve ends in (a run it does not stop
trains to the end). Printed per rule: the confusion matrix (truth x prediction), the agreement, the
share of training steps early stopping saves, and every run where the two disagree.
Runs that did not run to the end (stopped early by a rule other than none, failed) are counted and
left out. Several values in --window / --margin / --factor try each combination (calibration).
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys

from omegaconf import OmegaConf

from precisionlab.store import ResultsStore
from precisionlab.train.outcomes import END_WINDOW, NoRule, make_rule, reference_loss, replay

STALLED = 0.1  # a finite run whose end level is within 10% of ln V below it learned little
CLASSES = ("diverged", "stalled", "completed")


def end_class(losses: list[float], vocab_size: int) -> str:
    """The ground truth of a curve run to the end (module docstring)."""
    level = reference_loss(vocab_size)
    if replay(NoRule(level), losses)[0] == "diverged":
        return "diverged"
    return "stalled" if statistics.median(losses[-END_WINDOW:]) > (1 - STALLED) * level else "completed"


def curves(store: ResultsStore, sweep: str | None) -> tuple[list[dict], list[str]]:
    """Every run of the store (or sweep) that trained all its steps: config, name and train losses."""
    runs = store.runs(sweep=sweep)
    metrics = store.metrics(sweep=sweep, split="train")
    by_run = {rid: list(group.sort_values("step").loss.astype(float)) for rid, group in metrics.groupby("run_id")}
    kept, skipped = [], []
    for run in runs.itertuples():
        cfg = OmegaConf.create(run.config)
        losses = by_run.get(run.run_id, [])
        finite = all(math.isfinite(x) for x in losses)
        name = (f"{run.run_id} {cfg.precision.get('format', cfg.precision.name)} lr={cfg.optim.lr:g} "
                f"seed={cfg.seed}")
        if run.status == "failed" or not losses or (finite and len(losses) < cfg.train.steps):
            skipped.append(f"{name}: {run.status}, {len(losses)} of {cfg.train.steps} steps")
            continue
        kept.append({"cfg": cfg, "name": name, "losses": losses})
    return kept, skipped


def evaluate(runs: list[dict], rule: str, window: int, margin: float, factor: float) -> None:
    matrix = {(t, p): 0 for t in CLASSES for p in CLASSES}
    wrong, steps_full, steps_rule = [], 0, 0
    for run in runs:
        cfg, losses = run["cfg"], run["losses"]
        truth = end_class(losses, cfg.model.vocab_size)
        settings = OmegaConf.merge(cfg, {"train": {"divergence": {
            "rule": rule, "window": window, "margin": margin, "factor": factor}}})
        r = make_rule(settings)
        stopped = next((i + 1 for i, loss in enumerate(losses) if r.update(loss)), None)
        if stopped is not None or r.end() is not None:
            predicted = "diverged"
        else:
            predicted = "stalled" if truth == "diverged" else truth  # ran to the end: its own end class
        matrix[truth, predicted] += 1
        steps_full += cfg.train.steps
        steps_rule += stopped or cfg.train.steps
        if truth != predicted:
            end = statistics.median(losses[-END_WINDOW:])
            wrong.append(f"  {run['name']}: truth {truth} (end level {end:.3f}), predicted {predicted}"
                         + (f" (stopped at step {stopped}, loss {losses[stopped - 1]:.3f})" if stopped else ""))
    n = sum(matrix.values())
    agree = sum(matrix[c, c] for c in CLASSES)
    n_missed = matrix["diverged", "stalled"] + matrix["diverged", "completed"]
    print(f"\nrule={rule}" + {"median": f" window={window} margin={margin:g}", "factor": f" factor={factor:g}"}.get(rule, ""))
    print("  " + "truth / predicted".ljust(20) + "".join(f"{c:>11}" for c in CLASSES))
    for t in CLASSES:
        print(f"  {t:<20}" + "".join(f"{matrix[t, p]:>11}" for p in CLASSES))
    print(f"  agreement {agree}/{n} = {100 * agree / max(n, 1):.1f}%; "
          f"stalled called diverged: {matrix['stalled', 'diverged']}; "
          f"completed called diverged: {matrix['completed', 'diverged']}; "
          f"diverged not called: {n_missed}; "
          f"steps saved {100 * (1 - steps_rule / max(steps_full, 1)):.1f}%")
    for line in wrong:
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="a results store of runs made with train.divergence.rule=none")
    parser.add_argument("--sweep", help="only this sweep's runs")
    parser.add_argument("--rule", default="median,factor", help="rules to replay, comma-separated (median, none, factor)")
    parser.add_argument("--window", default="20", help="train.divergence.window value(s), comma-separated")
    parser.add_argument("--margin", default="0", help="train.divergence.margin value(s), comma-separated")
    parser.add_argument("--factor", default="1", help="train.divergence.factor value(s) for rule=factor")
    args = parser.parse_args(argv)
    try:
        store = ResultsStore(args.store, read_only=True, create=False)
        runs, skipped = curves(store, args.sweep)
    except Exception as err:  # a missing or unreadable store: one line
        print(f"error: cannot read the store {args.store}: {err}", file=sys.stderr)
        return 2
    if not runs:
        print(f"error: no run of {args.store}{' sweep ' + args.sweep if args.sweep else ''} ran to the end", file=sys.stderr)
        return 2
    truth = [end_class(r["losses"], r["cfg"].model.vocab_size) for r in runs]
    print(f"{len(runs)} runs run to the end: " + ", ".join(f"{truth.count(c)} {c}" for c in CLASSES))
    if skipped:
        print(f"{len(skipped)} runs left out (not run to the end):")
        for line in skipped:
            print("  " + line)
    floats = lambda text: [float(v) for v in text.split(",")]  # noqa: E731
    for rule in args.rule.split(","):
        windows = [int(w) for w in args.window.split(",")] if rule == "median" else [0]
        margins = floats(args.margin) if rule == "median" else [0.0]
        factors = floats(args.factor) if rule == "factor" else [1.0]
        for window, margin, factor in itertools.product(windows, margins, factors):
            evaluate(runs, rule, window, margin, factor)
    return 0


if __name__ == "__main__":
    sys.exit(main())
