"""The adaptive frontier search: the fewest bits that train as well as a reference format, by bisection.

Definitions:
  axis       one field width varied with the other fixed at the reference's: `mantissa` (E fixed,
             M from the reference's down to 0) or `exponent` (M fixed, E from the reference's down
             to EXPONENT_FLOOR), or an explicit list of widths on that axis;
  decision   a width's final validation losses against the reference's, paired by seed, by
             `stats.paired_margin` with margin δ: "within" (the difference's printed interval lies
             below +δ), "beyond" (above +δ), "undecided" (neither, or fewer than 3 pairs), and
             "diverged" where any of its runs diverged while the reference's run of that seed did not
             (a run that diverged is worse than any margin);
  frontier   the narrowest width whose decision is "within".

Assumption: the response is monotone in the width: fewer bits never train better, so every width
narrower than one that fails (beyond or diverged) fails too. Bisection rests on it: after a "within"
no wider width is run, after a failure no narrower one is. `Result.violations` lists the pairs of
judged widths that break it (a narrower width within while a wider one fails), judged from every
width the search has data for, runs that were already in the store included.

Seeds: a width starts with `start_seeds` seeds paired with the reference's; an undecided width (and
the reference) gets twice as many, up to `max_seeds`. A width still undecided at `max_seeds` is not
shown within: the bisection goes on among the wider widths. A "within" is a one-sided test at 1% per
look (the interval is `stats`' t interval with its skewness margin); with at most three looks per
width (3, 6, 8 seeds) a width whose true difference is δ is called within with probability <= 3%.

The search stops when the frontier is decided (its next narrower width fails, or it is the axis
end), when the next narrower width is undecided at `max_seeds`, or when the next round needs more new
runs than the budget has left (the result then says what is known). It never runs a (width, seed)
it has a result for: `known` holds results found elsewhere (the results store), and `run` is asked
for each round's whole request (the glue links the runs it reuses to its sweep).

The budget bounds the runs the search uses, trained or found: the design's size, so a search gives
the same answer, and stops at the same point, whether its runs were trained now or reused (a second
search over the same store trains nothing and says the same).

`run(request) -> results`: request = {width: [seeds]}; results = {width: {seed: final validation loss}},
math.inf for a run that diverged, a missing entry for a run that failed (the search stops there).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from precisionlab.analysis.dose import decide
from precisionlab.analysis.stats import interval_text

__all__ = ["AXES", "EXPONENT_FLOOR", "Axis", "FrontierError", "Verdict", "Round", "Result", "make_axis", "judge",
           "search", "monotone_violations"]

AXES = ("mantissa", "exponent")
EXPONENT_FLOOR = 4  # the default exponent axis stops at E4: without scaling, training breaks there
FAILS = ("beyond", "diverged")
_NAME = re.compile(r"e([1-9][0-9]*)m(0|[1-9][0-9]*)")


class FrontierError(ValueError):
    """Bad frontier input; the message is one line naming what is wrong and what is accepted."""


@dataclass(frozen=True)
class Axis:
    name: str                # mantissa or exponent
    exp_bits: int            # the reference's E
    man_bits: int            # the reference's M
    widths: tuple[int, ...]  # the candidate widths, widest first, all narrower than the reference's

    @property
    def reference(self) -> int:
        """The reference's width on this axis."""
        return self.man_bits if self.name == "mantissa" else self.exp_bits

    @property
    def letter(self) -> str:
        return "M" if self.name == "mantissa" else "E"

    def format(self, width: int) -> str:
        """The format name of a width on this axis (e8m3 on the mantissa axis of e8m7)."""
        return f"e{self.exp_bits}m{width}" if self.name == "mantissa" else f"e{width}m{self.man_bits}"

    def bits(self, width: int) -> int:
        """Bits per element: sign, exponent and mantissa."""
        return 1 + width + (self.exp_bits if self.name == "mantissa" else self.man_bits)


def make_axis(reference: str, axis: str, widths: Sequence[int] | None = None) -> Axis:
    """The axis `axis` through the eXmY format `reference`; `widths` (default: every width from the
    reference's down to 0 for mantissa, to EXPONENT_FLOOR for exponent) must lie on it. FrontierError."""
    if axis not in AXES:
        raise FrontierError(f"--axis must be one of {', '.join(AXES)}; got {axis!r}")
    match = _NAME.fullmatch(reference)
    if not match or not (1 <= int(match[1]) <= 8 and int(match[2]) <= 23):
        raise FrontierError(f"--reference must be an eXmY format (X in 1..8, Y in 0..23, IEEE conventions), e.g. "
                            f"e8m7; got {reference!r}")
    e, m = int(match[1]), int(match[2])
    top, floor = (m, 0) if axis == "mantissa" else (e, min(EXPONENT_FLOOR, e))
    lowest = 0 if axis == "mantissa" else 1
    if widths is None:
        widths = range(top, floor - 1, -1)
    off = [w for w in widths if not lowest <= w <= top]
    if off:
        raise FrontierError(f"--widths {','.join(map(str, widths))}: {', '.join(map(str, off))} not on the {axis} "
                            f"axis of {reference}; accepted: {'M' if axis == 'mantissa' else 'E'} widths "
                            f"{lowest}..{top}")
    candidates = tuple(sorted({w for w in widths if w != top}, reverse=True))
    if not candidates:
        raise FrontierError(f"--widths gives no width narrower than the reference {reference}; give at least one "
                            f"in {lowest}..{top - 1}")
    return Axis(axis, e, m, candidates)


@dataclass(frozen=True)
class Verdict:
    decision: str  # within, beyond, undecided, diverged
    n: int         # seeds paired with the reference
    diff: float    # mean of width - reference (nats/byte); NaN when diverged
    low: float
    high: float
    kind: str      # the interval's kind (stats.CI, RANGE or NONE)
    diverged: int  # the width's diverged runs among the pairs

    def text(self) -> str:
        if self.decision == "diverged":
            return f"diverges ({self.diverged}/{self.n} runs)"
        return f"Δ {interval_text(self.diff, self.low, self.high, self.kind, '+.3f')} ({self.n} seeds)"


def judge(losses: Mapping[int, float], reference: Mapping[int, float], seeds: Sequence[int], margin: float) -> Verdict:
    """One width's decision over `seeds` (a non-finite loss: the run diverged), by the report's rule
    (`precisionlab.analysis.dose.decide`): diverged where the width diverged on a seed the reference
    got through, else the margin test over the seeds both completed."""
    split = [{s: x[s] for s in seeds if s in x and math.isfinite(x[s])} for x in (losses, reference)]
    diverged = [{s for s in seeds if s in x and not math.isfinite(x[s])} for x in (losses, reference)]
    out = decide(split[0], diverged[0], split[1], diverged[1], margin)
    if out["decision"] == "diverged":  # n: the seeds compared, the width's diverged ones included
        return Verdict("diverged", out["n"] + out["unmatched"], math.nan, math.nan, math.nan, "", out["unmatched"])
    return Verdict(out["decision"], out["n"], out["diff"], out["low"], out["high"], out["kind"], 0)


@dataclass(frozen=True)
class Round:
    number: int
    width: int
    seeds: int       # seeds of the width and of the reference this round
    new: int         # runs trained for it
    reused: int      # runs it had already
    why: str
    verdict: Verdict


@dataclass
class Result:
    axis: Axis
    margin: float
    status: str                 # decided, undecided, budget, failed, reference
    frontier: int | None        # the narrowest width shown within; None: no narrower width is
    below: int | None           # the candidate next narrower than the frontier; None: the frontier is the axis end
    verdicts: dict[int, Verdict]  # the widths the bisection decided on (their last look)
    rounds: list[Round]
    trained: int                # runs trained by this search (not known before it)
    used: int                   # distinct runs its decisions drew on (trained + reused); at most the budget
    budget: int
    start_seeds: int
    max_seeds: int
    reference_diverged: int = 0  # the reference's diverged runs among the seeds it ran
    violations: list[tuple[int, int]] = field(default_factory=list)  # (wider failing, narrower within)
    extra: dict[int, Verdict] = field(default_factory=dict)  # widths judged from data the search had but did not ask for

    @property
    def exhaustive(self) -> int:
        """Runs of the exhaustive grid at start_seeds: every width on the axis and the reference."""
        return (len(self.axis.widths) + 1) * self.start_seeds

    def sentence(self, where: str = "") -> str:
        """The frontier in one sentence (`where`: e.g. "at LR 3e-3")."""
        ax, ref = self.axis, self.axis.format(self.axis.reference)
        at = f" {where}" if where else ""
        delta = f"δ = {self.margin:g} nats/byte"

        def said(width: int) -> str:
            v = self.verdicts[width]
            return (f"{ax.format(width)} {v.text()}" if v.decision == "diverged" else
                    f"{ax.format(width)} is {v.decision}: {v.text()}")

        if self.status == "reference":
            return f"the reference {ref} diverged on every seed{at}: there is nothing to compare with"
        if self.frontier is None:
            head = f"no width narrower than {ref} was shown to match it{at} within {delta}"
        else:
            v = self.verdicts[self.frontier]
            head = (f"training matches {ref} down to {ax.format(self.frontier)} ({ax.bits(self.frontier)} bits){at} "
                    f"within {delta}: {v.text()}")
        if self.below is None:
            tail = f"; {ax.format(self.frontier)} is the end of the axis" if self.frontier is not None else ""
        elif self.below in self.verdicts:
            tail = f"; {said(self.below)}"
        else:
            tail = f"; {ax.format(self.below)} was not run"
        state = {"decided": "the frontier is decided",
                 "undecided": f"not decided: {ax.format(self.below) if self.below is not None else '?'} stays "
                              f"undecided at {self.max_seeds} seeds (raise --max-seeds)",
                 "budget": f"not decided: the budget of {self.budget} runs is spent",
                 "failed": "not decided: a run failed (see the sweep's output)"}[self.status]
        return f"{head}{tail} ({state})."

    def known(self) -> str:
        """What the search knows, width by width (for a search that stopped before deciding)."""
        judged = {**self.extra, **self.verdicts}
        return "; ".join(f"{self.axis.format(w)}: {judged[w].decision}" + (
            f" ({judged[w].text()})" if judged[w].decision != "diverged" else f" ({judged[w].diverged}/{judged[w].n})")
            for w in sorted(judged, reverse=True)) or "nothing yet"

    def runs_line(self) -> str:
        formats = len(self.axis.widths) + 1
        most = max((v.n for v in self.verdicts.values()), default=self.start_seeds)
        return (f"runs used: {self.used} ({self.trained} trained now, {self.used - self.trained} reused), budget "
                f"{self.budget}; an exhaustive grid of the {formats} formats at {self.start_seeds} "
                f"seeds is {self.exhaustive} runs"
                + (f", at {most} seeds (the most this search gave a width) {formats * most}" if most > self.start_seeds
                   else ""))


def _label(axis: Axis, index: int) -> str:
    if index < 0:
        return f"the reference ({axis.letter}{axis.reference})"
    if index >= len(axis.widths):
        return f"the axis end ({axis.letter}{axis.widths[-1]})"
    return f"{axis.letter}{axis.widths[index]}"


def search(axis: Axis, run: Callable[[dict[int, list[int]]], Mapping[int, Mapping[int, float]]], margin: float,
           budget: int, start_seeds: int = 3, max_seeds: int = 8, known: Mapping[int, Mapping[int, float]] | None = None,
           say: Callable[[str], None] = lambda line: None) -> Result:
    """Bisect `axis` for the frontier against its reference (module docstring); `say` gets one line per round."""
    data: dict[int, dict[int, float]] = {w: dict(results) for w, results in (known or {}).items()}
    ref, count = axis.reference, len(axis.widths)
    lo, hi = -1, count  # widths[lo] is within (-1: the reference), widths[hi] is not (count: past the axis end)
    verdicts: dict[int, Verdict] = {}
    rounds: list[Round] = []
    used: set[tuple[int, int]] = set()
    trained, status = 0, None
    while hi - lo > 1 and status is None:
        mid = (lo + hi) // 2
        width, n = axis.widths[mid], start_seeds
        why = f"bisection between {_label(axis, lo)} and {_label(axis, hi)}"
        while True:
            request = {ref: list(range(n)), width: list(range(n))}
            pairs = {(w, s) for w, seeds in request.items() for s in seeds}
            new = {(w, s) for w, s in pairs if s not in data.get(w, {})}
            if len(used | pairs) > budget:
                status = "budget"
                say(f"stop: {axis.format(width)} at {n} seeds would bring the runs used to {len(used | pairs)}; "
                    f"the budget is {budget}")
                break
            for w, results in run(request).items():
                data.setdefault(w, {}).update(results)
            trained += len(new)
            used |= pairs
            if any(s not in data.get(w, {}) for w, s in pairs):
                status = "failed"
                say(f"stop: a run of {axis.format(width)} or of the reference failed")
                break
            ref_runs = [data[ref][s] for s in range(n)]
            if not any(math.isfinite(x) for x in ref_runs):
                status = "reference"
                say(f"stop: the reference {axis.format(ref)} diverged on all {n} seeds")
                break
            verdict = judge(data[width], data[ref], range(n), margin)
            rounds.append(Round(len(rounds) + 1, width, n, len(new), len(pairs) - len(new), why, verdict))
            say(f"round {len(rounds)}: {axis.format(width)} and the reference {axis.format(ref)} at seeds 0-{n - 1}: "
                f"{len(new)} new runs, {len(pairs) - len(new)} already done ({why}) -> "
                f"{verdict.decision}: {verdict.text()}")
            if verdict.decision == "undecided" and n < max_seeds:
                why = f"{axis.format(width)} undecided at {n} seeds: more seeds"
                n = min(max_seeds, 2 * n)
                continue
            verdicts[width] = verdict
            if verdict.decision == "within":
                lo = mid
            else:
                hi = mid
            break
    frontier = axis.widths[lo] if lo >= 0 else None
    below = axis.widths[hi] if hi < count else None
    if status is None:
        status = "decided" if below is None or verdicts[below].decision in FAILS else "undecided"
    ran = max((r.seeds for r in rounds), default=0)
    ref_diverged = sum(not math.isfinite(x) for s, x in data.get(ref, {}).items() if s < ran)
    result = Result(axis, margin, status, frontier, below, verdicts, rounds, trained, len(used), budget,
                    start_seeds, max_seeds, ref_diverged)
    result.extra = {w: judge(data[w], data.get(ref, {}), range(start_seeds), margin) for w in axis.widths
                    if w not in verdicts and all(s in data.get(w, {}) and s in data.get(ref, {})
                                                 for s in range(start_seeds))}
    result.violations = monotone_violations(axis, {**result.extra, **verdicts})
    return result


def monotone_violations(axis: Axis, verdicts: Mapping[int, Verdict]) -> list[tuple[int, int]]:
    """Pairs (wider, narrower) of judged widths where the wider fails and the narrower is within."""
    return [(a, b) for a in axis.widths for b in axis.widths
            if a > b and a in verdicts and b in verdicts
            and verdicts[a].decision in FAILS and verdicts[b].decision == "within"]
