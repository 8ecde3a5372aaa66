"""precisionlab.analysis.where: the --where language (names, literals, comparisons, in / not in,
and / or / not; nothing else is evaluated), on the known sweep of tests/helpers/known_sweep.py."""

from __future__ import annotations

import pandas as pd
import pytest

from helpers.known_sweep import SWEEP, known_store
from precisionlab.analysis.labels import label_runs
from precisionlab.analysis.report import ReportError, build
from precisionlab.analysis.where import WhereError, filter_runs


@pytest.fixture
def store(tmp_path):
    return known_store(tmp_path)


def test_where_filters(store):
    runs = label_runs(store.runs(sweep=SWEEP))
    assert set(filter_runs(runs, ["format=e8m7,fp32"]).format) == {"e8m7", "fp32"}
    assert set(filter_runs(runs, ["lr=1e-3"]).lr) == {1e-3}
    kept = filter_runs(runs, ["lr < 0.005 and seed == 0", "format != 'e7m7'"])
    assert sorted(kept.format) == ["e8m3", "e8m7", "fp32"] and set(kept.seed) == {0}
    report = build(store, SWEEP, ["format=e8m3,e7m7"])
    assert list(report.by_variant.variant) == ["e7m7", "e8m3"] and report.reference == "e7m7"
    assert any("8 of 16 runs" in note for note in report.notes)


@pytest.mark.parametrize("where, message", [
    (["colour=red"], "unknown column 'colour'"),
    (["lr=fast"], "lr takes numbers"),
    (["lr <<< 3"], "is not a usable filter"),
    (["nonsense_column > 3"], "is not a usable filter"),
    (["lr in 3"], "in / not in take a list"),
    (["format < 3"], "is not a usable filter"),
])
def test_bad_where_is_one_line(store, where, message):
    with pytest.raises(ReportError, match=message) as info:
        build(store, SWEEP, where)
    assert "\n" not in str(info.value)


def test_where_accepts_comparisons_lists_and_boolean_logic(store):
    runs = label_runs(store.runs(sweep=SWEEP))
    assert set(filter_runs(runs, ["format in ['e8m7', 'fp32']"]).format) == {"e8m7", "fp32"}
    assert set(filter_runs(runs, ["format not in ('e8m7', 'fp32') and not seed == 1"]).seed) == {0}
    assert set(filter_runs(runs, ["1e-3 <= lr < 5e-3"]).lr) == {1e-3}
    assert len(filter_runs(runs, ["lr > -1 or seed == 99"])) == len(runs)


@pytest.mark.parametrize("escape", [
    "lr.to_csv.__globals__['sys'].modules['os'].system('touch PWNED') == 0",
    "__import__('os').system('touch PWNED') == 0",
    "@lr.__class__ == 1",
    "(lambda: open('PWNED', 'w'))() == 1",
    "seed == seed.__class__.__mro__[-1].__subclasses__()",
    "[x for x in ().__class__.__base__.__subclasses__()] == 1",
    "format == f'{open(\"PWNED\", \"w\")}'",
])
def test_where_runs_no_code(store, escape, tmp_path, monkeypatch):
    """--where went to pandas' query, which evaluates Python: these ran commands. Now only
    names, literals, comparisons and and/or/not are evaluated; everything else is refused."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ReportError, match="is not a usable filter") as info:
        build(store, SWEEP, [escape])
    assert "\n" not in str(info.value) and not (tmp_path / "PWNED").exists()


# a hand-made grid: every (format, lr, seed, status) combination, so each filter keeps a different subset
GRID = pd.DataFrame([{"variant": f, "format": f, "lr": lr, "seed": seed, "status": status, "rounding": "nearest_even",
                      "model": "gpt2"}
                     for f in ("fp32", "e8m7", "e8m3") for lr in (1e-3, 3e-3, 1e-2) for seed in (0, 1, 2)
                     for status in ("completed", "diverged")])


@pytest.mark.parametrize("where, mask", [  # each mask written out by hand with pandas, not through the filter
    (["format=e8m3,fp32"], lambda r: r.format.isin(["e8m3", "fp32"])),
    (["lr=0.003"], lambda r: r.lr == 3e-3),
    (["seed=0,2", "status=diverged"], lambda r: r.seed.isin([0, 2]) & (r.status == "diverged")),
    (["lr >= 3e-3"], lambda r: r.lr >= 3e-3),
    (["lr < 1e-2", "seed <= 1"], lambda r: (r.lr < 1e-2) & (r.seed <= 1)),  # at the grid's values: the edges count
    (["2e-3 < lr <= 1e-2 and seed != 1"], lambda r: (r.lr > 2e-3) & (r.lr <= 1e-2) & (r.seed != 1)),
    (["format == 'e8m7' or status == 'diverged'"], lambda r: (r.format == "e8m7") | (r.status == "diverged")),
    (["not (format in ('fp32', 'e8m3') and lr < 5e-3)"], lambda r: ~(r.format.isin(["fp32", "e8m3"]) & (r.lr < 5e-3))),
    (["seed not in [0]", "lr > 1e-3"], lambda r: (r.seed != 0) & (r.lr > 1e-3)),
    (["lr > 1"], lambda r: r.lr > 1),
])
def test_filters_keep_what_a_pandas_mask_written_by_hand_keeps(where, mask):
    expected = GRID[mask(GRID)]
    kept = filter_runs(GRID, where)
    assert kept.index.tolist() == expected.index.tolist()


def test_a_bad_filter_is_a_where_error_of_one_line():
    for where in (["seed=one"], ["lr = = 3"], ["format.upper() == 'E8M3'"]):
        with pytest.raises(WhereError) as info:
            filter_runs(GRID, where)
        assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
