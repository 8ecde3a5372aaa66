"""The frontier search (precisionlab.sweep.frontier) on synthetic responses whose frontier is known,
and `precisionlab frontier`'s glue: bad input, and runs of `precisionlab sweep` reused.

The synthetic response: loss(width, seed) = 2 + seed effect (shared by every width, so it cancels in
the pairs) + f(width) + per-run noise, math.inf below the width where training diverges. The true
frontier is the narrowest width with f < δ, set by the draw, never by the search; f is monotone with
its widths' effects either clear of δ (`clear`) or, for the first failing width, exactly δ (`edge`).
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from precisionlab.sweep.frontier import FrontierError, judge, make_axis, search

CLI = str(Path(sys.executable).with_name("precisionlab"))
MARGIN = 0.02
AXIS = make_axis("e8m7", "mantissa")  # M 6..0 against M7


class Response:
    """A synthetic loss surface that counts the runs it computes (a results store's memo)."""

    def __init__(self, effects: dict[int, float], diverge_below: int | None, noise: float, seed: int):
        self.effects, self.diverge_below, self.noise = effects, diverge_below, noise
        self.rng = np.random.default_rng(seed)
        self.seed_effect: dict[int, float] = {}
        self.memo: dict[int, dict[int, float]] = {}
        self.computed = 0

    def loss(self, width: int, seed: int) -> float:
        if self.diverge_below is not None and width < self.diverge_below:
            return math.inf
        shared = self.seed_effect.setdefault(seed, float(self.rng.normal(0, 0.05)))
        return 2.0 + shared + self.effects[width] + float(self.rng.normal(0, self.noise))

    def __call__(self, request):
        out = {}
        for width, seeds in request.items():
            done = self.memo.setdefault(width, {})
            for s in seeds:
                if s not in done:
                    done[s] = self.loss(width, s)
                    self.computed += 1
            out[width] = {s: done[s] for s in seeds}
        return out


def draw(rng: np.random.Generator, edge: bool = False) -> tuple[Response, int | None]:
    """A monotone response on AXIS and its true frontier (None: no narrower width is within)."""
    widths = [AXIS.reference, *AXIS.widths]  # 7, 6, ..., 0
    cut = int(rng.integers(0, len(widths)))  # widths[:cut + 1] are within (cut 0: only the reference)
    effects, level = {}, 0.0
    for i, w in enumerate(widths):
        if i == 0:
            level = 0.0
        elif i <= cut:
            level = min(level + rng.uniform(0, 0.2 * MARGIN), 0.5 * MARGIN)  # clear below δ
        elif i == cut + 1:
            level = MARGIN if edge else max(level, 0.0) + rng.uniform(2.5, 6) * MARGIN  # at δ, or clear above
        else:
            level += rng.uniform(0, 5) * MARGIN
        effects[w] = level
    diverge = widths[int(rng.integers(cut + 1, len(widths)))] if cut + 1 < len(widths) and rng.random() < 0.4 else None
    noise = MARGIN / 8 if not edge else MARGIN / 4
    truth = widths[cut] if cut > 0 else None
    return Response(effects, diverge, noise, int(rng.integers(1 << 30))), truth


def test_names_the_true_frontier_when_effects_are_clear_of_the_margin():
    rng = np.random.default_rng(20261207)
    draws, right, decided, used = 1000, 0, 0, []
    for _ in range(draws):
        response, truth = draw(rng)
        result = search(AXIS, response, MARGIN, budget=64)
        decided += result.status == "decided"
        right += result.status == "decided" and result.frontier == truth
        used.append(result.used)
        assert result.used == response.computed == result.trained  # an empty store: every run used is trained
    rate = right / draws
    print(f"\nclear effects: true frontier named in {right}/{draws} draws ({rate:.1%}); decided {decided}; "
          f"runs used mean {np.mean(used):.1f} (max {max(used)}) vs an exhaustive grid of {result.exhaustive}")
    assert rate >= 0.95
    assert np.mean(used) < result.exhaustive


def test_a_width_exactly_at_the_margin_is_rarely_called_within():
    """The first failing width's true difference is δ itself: calling it within (a frontier narrower than
    the truth) is the search's false-within error, which the 1%-per-look test bounds (<= 3% in three looks)."""
    rng = np.random.default_rng(7)
    draws, too_narrow, right = 1000, 0, 0
    for _ in range(draws):
        response, truth = draw(rng, edge=True)
        result = search(AXIS, response, MARGIN, budget=200)
        rank = {w: i for i, w in enumerate([AXIS.reference, *AXIS.widths])}
        found = rank[result.frontier] if result.frontier is not None else 0
        too_narrow += found > (rank[truth] if truth is not None else 0)
        right += result.frontier == truth
    print(f"\nedge effects: frontier too narrow in {too_narrow}/{draws} draws; the truth named in {right}/{draws}")
    assert too_narrow / draws <= 0.05


def test_the_budget_is_never_exceeded_and_a_stop_says_so():
    rng = np.random.default_rng(3)
    stopped = 0
    for _ in range(200):
        response, truth = draw(rng, edge=bool(rng.random() < 0.5))
        budget = int(rng.integers(1, 30))
        lines = []
        result = search(AXIS, response, MARGIN, budget=budget, say=lines.append)
        assert result.used <= budget and response.computed == result.trained <= budget
        if result.status == "budget":
            stopped += 1
            assert lines[-1].startswith("stop:") and "not decided: the budget of" in result.sentence()
    assert stopped > 0  # small budgets do stop it


def test_a_second_search_over_the_same_store_runs_nothing_new():
    rng = np.random.default_rng(11)
    for _ in range(50):
        response, _ = draw(rng, edge=bool(rng.random() < 0.5))
        budget = int(rng.integers(6, 40))
        first = search(AXIS, response, MARGIN, budget=budget)
        computed = response.computed
        second = search(AXIS, response, MARGIN, budget=budget, known=response.memo)
        assert response.computed == computed and second.trained == 0
        assert (second.status, second.frontier, second.used) == (first.status, first.frontier, first.used)
        assert second.sentence() == first.sentence()


def test_runs_found_in_the_store_are_not_run_again():
    response = Response({w: 0.0 if w >= 3 else 1.0 for w in range(8)}, None, 0.001, 0)
    known = response({w: [0, 1, 2] for w in range(8)})  # an exhaustive grid at 3 seeds, already done
    computed = response.computed
    result = search(AXIS, response, MARGIN, budget=24, known=known)
    assert response.computed == computed and result.trained == 0 and result.used < 24
    assert (result.status, result.frontier, result.below) == ("decided", 3, 2)


def test_undecided_widths_get_more_seeds_up_to_the_maximum():
    # a difference of exactly δ with noise: never within nor beyond at 8 seeds, in this draw
    response = Response({7: 0.0, **{w: MARGIN for w in range(7)}}, None, MARGIN / 2, 5)
    lines = []
    result = search(make_axis("e8m7", "mantissa", [6]), response, MARGIN, budget=100, max_seeds=8, say=lines.append)
    assert [r.seeds for r in result.rounds] == [3, 6, 8]
    assert result.status == "undecided" and result.frontier is None and result.below == 6
    assert "undecided at 8 seeds" in result.sentence()


def test_divergence_fails_a_width_and_the_axis_end_decides():
    response = Response({w: 0.0 for w in range(8)}, 2, 0.001, 1)  # M1 and M0 diverge
    result = search(AXIS, response, MARGIN, budget=64)
    assert (result.status, result.frontier, result.below) == ("decided", 2, 1)
    assert result.verdicts[1].decision == "diverged" and "e8m1 diverges (3/3 runs)" in result.sentence()
    flat = Response({w: 0.0 for w in range(8)}, None, 0.001, 2)
    end = search(AXIS, flat, MARGIN, budget=64)
    assert (end.status, end.frontier, end.below) == ("decided", 0, None)
    assert "e8m0 is the end of the axis" in end.sentence()


def test_a_non_monotone_response_is_flagged():
    # M3 is beyond while the narrower M1 is within: the data (all widths, from the store) show it
    effects = {7: 0.0, 6: 0.0, 5: 0.0, 4: 0.0, 3: 0.2, 2: 0.2, 1: 0.0, 0: 0.5}
    response = Response(effects, None, 0.001, 4)
    known = response({w: [0, 1, 2] for w in range(8)})
    result = search(AXIS, response, MARGIN, budget=64, known=known)
    assert (3, 1) in result.violations and (2, 1) in result.violations
    assert all(narrower == 1 for _, narrower in result.violations)


def test_a_reference_that_always_diverges_ends_the_search():
    response = Response({w: 0.0 for w in range(8)}, 8, 0.001, 0)  # every width diverges, the reference too
    result = search(AXIS, response, MARGIN, budget=64)
    assert result.status == "reference" and "nothing to compare with" in result.sentence()


def test_judge_reads_the_interval_against_the_margin():
    # differences 0.010, 0.012, 0.014: mean 0.012, sd 0.002; the 98% t bound (t_0.99,2 = 6.965) is
    # 0.012 + 6.965 * 0.002 / sqrt(3) = 0.02004: just above δ = 0.02 (undecided), below δ = 0.021 (within)
    ref = {0: 2.0, 1: 2.1, 2: 1.9}
    x = {0: 2.010, 1: 2.112, 2: 1.914}
    assert judge(x, ref, range(3), 0.02).decision == "undecided"
    assert judge(x, ref, range(3), 0.021).decision == "within"
    assert judge(x, ref, range(3), 0.001).decision == "beyond"
    assert judge({**x, 1: math.inf}, ref, range(3), 0.02).decision == "diverged"


def test_axes():
    assert make_axis("e8m7", "mantissa").widths == (6, 5, 4, 3, 2, 1, 0)
    assert make_axis("e8m7", "exponent").widths == (7, 6, 5, 4)
    assert make_axis("e8m7", "exponent", [8, 5, 3]).widths == (5, 3)
    assert make_axis("e5m2", "mantissa").format(1) == "e5m1" and make_axis("e8m7", "exponent").format(4) == "e4m7"
    assert make_axis("e8m7", "mantissa").bits(2) == 11
    for reference, axis, widths in (("e8m7", "sideways", None), ("e8m7", "mantissa", [9]), ("e8m7", "exponent", [0]),
                                    ("e4m3fn", "mantissa", None), ("bf16", "mantissa", None), ("e8m7", "mantissa", [7])):
        with pytest.raises(FrontierError):
            make_axis(reference, axis, widths)


# ---- the command: bad input, and the store's runs reused

@pytest.mark.parametrize("args, says", [
    (["--axis", "diagonal", "--budget", "8"], "--axis must be one of mantissa, exponent"),
    (["--axis", "mantissa", "--budget", "0"], "--budget must be a positive number"),
    (["--axis", "mantissa", "--budget", "8", "--widths", "9,3"], "not on the mantissa axis"),
    (["--axis", "exponent", "--budget", "8", "--widths", "4,x"], "--widths must be comma-separated integers"),
    (["--axis", "mantissa", "--budget", "8", "--seeds", "2"], "--seeds must be an integer >= 3"),
    (["--axis", "mantissa", "--budget", "8", "seed=4"], "sets seed itself"),
    (["--axis", "mantissa", "--budget", "8", "model.n_layer=1,2"], "one value per key"),
    (["--axis", "mantissa", "--budget", "8", "train.stepz=3"], "train.stepz is not a config key"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, args, says):
    from typer.testing import CliRunner

    from precisionlab.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["frontier", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_sweeps_runs_are_reused_and_a_second_search_trains_nothing(tmp_path):
    from helpers import SWEEP_MICRO

    from precisionlab.store import ResultsStore

    common = [*SWEEP_MICRO, "train.threads=1"]
    sweep = subprocess.run([CLI, "sweep", "precision.format=e8m7,e8m3", "optim.lr=3e-3", "seed=0,1,2", *common],
                           cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert sweep.returncode == 0, sweep.stderr
    args = ["frontier", "--axis", "mantissa", "--widths", "3", "--budget", "6", "--max-seeds", "3", *common]
    first = subprocess.run([CLI, *args], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "round 1: e8m3 and the reference e8m7 at seeds 0-2: 0 new runs, 6 already done" in first.stdout
    assert "runs used: 6 (0 trained now, 6 reused)" in first.stdout
    store = ResultsStore(tmp_path / "results" / "precisionlab.db", read_only=True)
    assert len(store.runs()) == 6 and len(store.runs(sweep="frontier-mantissa")) == 6
    again = subprocess.run([CLI, *args], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "0 trained now" in again.stdout
    assert again.stdout.splitlines()[-4:] == first.stdout.splitlines()[-4:]  # the same sentence and runs
    report = subprocess.run([CLI, "report", "--sweep", "frontier-mantissa"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600)
    assert report.returncode == 0, report.stderr
