"""A sweep stored here with known values ("known"), and a planted one, for the report's tests
(tests/analysis/test_report.py, test_estimates.py, test_verdicts.py, test_where.py, test_compare.py).

Report arithmetic on a store built here with known values.

Every expectation is worked out by hand in the comments (initial loss ℓ₀ = 5.5 for every run):

  format  lr     seed 0            seed 1            ℓ per run          ℓ(η)
  fp32    1e-3   3.0               3.2               3.0, 3.2           3.1
  fp32    1e-2   3.4               3.6               3.4, 3.6           3.5    -> sens mean(0, .4) = 0.2
  e8m7    1e-3   3.1 (2 spikes)    3.3 (1 spike)     3.1, 3.3           3.2
  e8m7    1e-2   diverged @ 40     3.5               5.5, 3.5           4.5    -> sens mean(0, 1.3) = 0.65
  e8m3    1e-3   6.0 (> ℓ₀)        3.0               5.5, 3.0           4.25
  e8m3    1e-2   diverged @ 30     diverged @ 50     5.5, 5.5           5.5    -> sens mean(0, 1.25) = 0.625
  e7m7    1e-3   3.3               3.1               3.3, 3.1           3.2
  e7m7    1e-2   3.35              failed            3.35               3.35

Reference fp32 (most bits): diverged 0/4, sens 0.2, seed std at 1e-3 = std(3.0, 3.2) = 0.141421.
LR sensitivity and its interval come from the seeds that finished every LR: for e7m7 seed 0 alone
([3.3, 3.35] -> mean(0, .05) = 0.025; all runs would give mean(0, .15) = 0.075 with seed 1's 3.1).
Two seeds give no confidence interval but their range: e8m7's seeds alone have sensitivities 1.2
([3.1, 5.5]) and 0.1 ([3.3, 3.5]), fp32's 0.2 and 0.2; ΔS per seed: 1.0 and -0.1.
Every verdict is "too few seeds to test": with two seeds no permutation p can be below 0.5 (with
6 tests Holm can bring it no lower than 1), no divergence count can reach 0.05, and the loss is
not tested (the paired t test needs 3 seeds).
"""

from __future__ import annotations

import math

import numpy as np

from precisionlab.store import ResultsStore, run_id

L0 = 5.5
SWEEP = "known"
# (format or None for fp32, lr, seed) -> (status, final val loss, diverged step, spikes)
RUNS = {
    (None, 1e-3, 0): ("completed", 3.0, None, 0), (None, 1e-3, 1): ("completed", 3.2, None, 0),
    (None, 1e-2, 0): ("completed", 3.4, None, 0), (None, 1e-2, 1): ("completed", 3.6, None, 0),
    ("e8m7", 1e-3, 0): ("completed", 3.1, None, 2), ("e8m7", 1e-3, 1): ("completed", 3.3, None, 1),
    ("e8m7", 1e-2, 0): ("diverged", 3.0, 40, 0), ("e8m7", 1e-2, 1): ("completed", 3.5, None, 0),
    ("e8m3", 1e-3, 0): ("completed", 6.0, None, 0), ("e8m3", 1e-3, 1): ("completed", 3.0, None, 0),
    ("e8m3", 1e-2, 0): ("diverged", 2.9, 30, 0), ("e8m3", 1e-2, 1): ("diverged", 2.9, 50, 0),
    ("e7m7", 1e-3, 0): ("completed", 3.3, None, 0), ("e7m7", 1e-3, 1): ("completed", 3.1, None, 0),
    ("e7m7", 1e-2, 0): ("completed", 3.35, None, 0), ("e7m7", 1e-2, 1): ("failed", None, None, 0),
}


def known_config(fmt, lr, seed, rounding="toward_zero"):
    precision = {"name": "fp32", "format": None, "x": None, "w": None, "grad": None, "rounding": "nearest_even"} \
        if fmt is None else {"name": "mask", "format": fmt, "x": fmt, "w": fmt, "grad": fmt, "rounding": rounding}
    return {"model": {"arch": "gpt2", "n_layer": 2}, "precision": precision, "optim": {"lr": lr}, "seed": seed,
            "store": {"path": "ignored"}, "train": {"threads": seed}}  # threads vary but are not semantic


def record_run(store, cfg, status, final, diverged_step, spikes, sweep=SWEEP):
    rid = run_id(cfg)
    assert store.claim_run(rid, cfg, sweep)
    with store.recorder(rid) as rec:
        rec.log(1, "train", {"loss": L0})
        if final is not None:
            rec.log(10, "val", {"loss": final})  # a diverged run's earlier eval must not count
        if status == "diverged":
            rec.log(diverged_step, "train", {"loss": math.inf})
        rec.finish({"status": status, "diverged_step": diverged_step, "spikes": spikes,
                    **({"error": "RuntimeError: boom"} if status == "failed" else {})})
    return rid


def known_store(tmp_path) -> ResultsStore:
    """The "known" sweep of the table above, in a new SQLite store under tmp_path."""
    store = ResultsStore(tmp_path / "store.db")
    store.add_sweep(SWEEP, command="test")
    for (fmt, lr, seed), outcome in reversed(RUNS.items()):  # insertion order must not matter
        record_run(store, known_config(fmt, lr, seed), *outcome)
    return store


def planted_store(tmp_path, seeds: int = 8) -> ResultsStore:
    """fp32 and two formats over LRs 1e-3, 1e-2 and `seeds` seeds, losses drawn around known curves:
    e8m3 is planted less stable (1e-2 diverges in every seed), e8m7 is fp32's twin (same curve,
    fresh noise)."""
    rng = np.random.default_rng(0)
    store = ResultsStore(tmp_path / "planted.db")
    for fmt in (None, "e8m7", "e8m3"):
        for seed in range(seeds):
            for lr, mean in ((1e-3, 3.0), (1e-2, 3.3)):
                if fmt == "e8m3" and lr == 1e-2:
                    record_run(store, known_config(fmt, lr, seed), "diverged", None, 20, 0, sweep="planted")
                else:
                    loss = mean + rng.normal(0, 0.05)
                    record_run(store, known_config(fmt, lr, seed), "completed", loss, None, 0, sweep="planted")
    return store
