"""scripts/paper_tables.py: the 'what reproduces' verdicts on stores with known answers."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

from precisionlab.analysis.report import build
from precisionlab.store import ResultsStore, run_id

SCRIPT = Path(__file__).parents[2] / "scripts" / "paper_tables.py"


def _script():
    spec = importlib.util.spec_from_file_location("paper_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(store, fmt, lr, seed, final, diverged=False, loss0=5.3):
    cfg = {"model": {"arch": "gpt2", "vocab_size": 256}, "seed": seed, "optim": {"lr": lr},
           "precision": {"name": "mask", "format": fmt, "x": fmt, "w": fmt, "grad": fmt}}
    rid = run_id(cfg)
    assert store.claim_run(rid, cfg, "paper")
    with store.recorder(rid) as rec:
        rec.log(1, "train", {"loss": loss0})
        rec.log(10, "val", {"loss": final})
        rec.finish({"status": "diverged" if diverged else "completed", "diverged_step": 10 if diverged else None})


def _store(tmp_path, e8m3_diverges: bool) -> ResultsStore:
    """e8m7 and its bit-identical twin e7m7 at two LRs x 4 seeds; e8m3 a little worse, diverging at the
    higher LR in every seed when asked."""
    store = ResultsStore(tmp_path / "s.db")
    for seed in range(4):
        for lr, loss in ((1e-3, 2.2), (1e-2, 2.6)):
            for fmt in ("e8m7", "e7m7"):
                _record(store, fmt, lr, seed, loss + 0.01 * seed)
            _record(store, "e8m3", lr, seed, loss + 0.05 + 0.01 * seed, diverged=e8m3_diverges and lr == 1e-2)
    return store


def _verdicts(store) -> dict[str, str]:
    table = _script().claims(build(store, "paper"))
    return dict(zip(table["the paper's claim"], table["verdict"]))


def test_a_grid_without_divergence_cannot_test_the_divergence_claims(tmp_path):
    verdicts = _verdicts(_store(tmp_path, e8m3_diverges=False))
    assert verdicts["fewer mantissa bits diverge more"].startswith("not testable here: no run of the grid diverged")
    assert verdicts["sharpness rises before divergence"].startswith("not testable here")
    assert verdicts["E7M7 (clipped exponent) fails"].startswith("not testable here: the tiny model's GEMM inputs")
    # 4 paired seeds, Holm over the family: 2/16 per test cannot reach 0.05
    assert verdicts["fewer mantissa bits raise LR sensitivity"].startswith("not testable here: With 4 paired seeds")


def test_a_divergence_at_every_seed_of_one_lr_is_tested_stratified(tmp_path):
    verdicts = _verdicts(_store(tmp_path, e8m3_diverges=True))
    # 4/4 against 0/4 at one LR (the other LR's stratum says nothing): the two-sided exact p is
    # 2 / C(8, 4) = 1/35. The family holds the tests that can reach 0.05 (Tarone): e8m3's divergence
    # test and 6 loss tests (final and best loss of e7m7 at both LRs, of e8m3 at 1e-3, where it
    # completed), not e7m7's divergence test (no run diverged: its p is 1 whatever happens) nor the
    # two ΔS tests (4 paired seeds: 2/16 at best). e8m3's two loss tests have p = 0 (+0.05 in every
    # seed), so Holm multiplies 1/35 by 7 - 2 = 5
    assert verdicts["fewer mantissa bits diverge more"] == (
        f"not detected (exact test stratified by LR, Holm: E8M3 p = {5 * 2 / math.comb(8, 4):.2g})")


def test_write_replaces_only_marked_blocks(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- tables:paper -->\nold\n<!-- /tables:paper -->\noutro\n")
    assert _script().write(readme, {"paper": "new table", "fp4": "x"}) == ["paper"]
    assert readme.read_text() == "intro\n<!-- tables:paper -->\nnew table\n<!-- /tables:paper -->\noutro\n"


def test_a_missing_store_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--store", str(tmp_path / "none.db")], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and proc.stderr.count("\n") == 1


@pytest.mark.parametrize("name", ["fp4", "fp8_recipes", "master_weights"])
def test_a_study_missing_from_the_store_names_its_command(tmp_path, name):
    store = _store(tmp_path, e8m3_diverges=False)
    assert "is not in this store" in _script().blocks(store)[name]
