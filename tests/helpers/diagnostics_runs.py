"""A store built here with known numerical-diagnostics rows, and its report (shared by
tests/analysis/test_diagnostics_summary.py and tests/analysis/test_report_diagnostics.py).

Hand-worked values (dyadic, so every mean is exact); fp32 runs report only gradient fidelity,
e8m3 runs (seeds 0 and 1) report at steps 5 and 10:

  site / name                          seed 0 (5, 10)    seed 1 (5, 10)    per step     over steps
  blocks.0.attn.c_attn/fwd_x saturated 0.125, 0.375      0.375, 0.625      0.25, 0.5    0.375
  lm_head/fwd_w saturated              0.0625 always                                    0.0625
  blocks.0.attn.c_attn/dgrad_g         saturated 0, flushed 0.5, cast_error 0.25 always
  model grad_cosine                    0.875, 0.75       0.625, 0.5        0.75, 0.625  min 0.625
  attn_logit_max blocks.0 / blocks.1   3 / 4 at step 5, 5 / 2 at step 10 (both seeds)   max 5
  model log_z                          5.5, 6                                           max 6
  update_ratio                         c_attn.weight 0.01, c_attn.bias 0.5 (biases not counted)
"""

from __future__ import annotations

from precisionlab.analysis.report import Report, build
from precisionlab.store import ResultsStore, run_id

FWD_X, DGRAD_G, HEAD_W = "blocks.0.attn.c_attn/fwd_x", "blocks.0.attn.c_attn/dgrad_g", "lm_head/fwd_w"


def _rows(fmt, seed, step):
    if fmt is None:
        return [("model", "grad_cosine", 1.0)]
    late = step == 10
    return [
        (FWD_X, "saturated", [0.125, 0.375, 0.375, 0.625][2 * seed + late]), (FWD_X, "flushed", 0.0),
        (FWD_X, "cast_error", 0.125), (HEAD_W, "saturated", 0.0625), (HEAD_W, "flushed", 0.0),
        (HEAD_W, "cast_error", 0.0625), (DGRAD_G, "saturated", 0.0), (DGRAD_G, "flushed", 0.5),
        (DGRAD_G, "cast_error", 0.25),
        ("model", "grad_cosine", [0.875, 0.75, 0.625, 0.5][2 * seed + late]),
        ("blocks.0.attn", "attn_logit_max", 5.0 if late else 3.0), ("blocks.1.attn", "attn_logit_max", 2.0 if late else 4.0),
        ("model", "log_z", 6.0 if late else 5.5),
        ("blocks.0.attn.c_attn.weight", "update_ratio", 0.01), ("blocks.0.attn.c_attn.bias", "update_ratio", 0.5),
    ]


def diagnostics_report(tmp_path) -> Report:
    store = ResultsStore(tmp_path / "store.db")
    for fmt in (None, "e8m3"):
        for seed in (0, 1):
            precision = {"name": "fp32", "format": "fp32"} if fmt is None else {"name": "mask", "format": fmt,
                                                                              "x": fmt, "w": fmt, "grad": fmt}
            cfg = {"model": {"n_layer": 2}, "precision": precision, "optim": {"lr": 1e-3}, "seed": seed}
            rid = run_id(cfg)
            assert store.claim_run(rid, cfg, "diag")
            with store.recorder(rid) as rec:
                for step in (5, 10):
                    rec.log(step, "train", {"loss": 5.0 - step / 10})
                    rec.diagnostics(step, _rows(fmt, seed, step))
                rec.log(10, "val", {"loss": 4.0})
                rec.finish({"status": "completed"})
    return build(store, "diag")
