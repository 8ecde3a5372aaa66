"""The effects presets compose to the grids their header comments describe (values written out
from configs/sweep/*.yaml and configs/precision/*.yaml, not from the code that composes them)."""

from __future__ import annotations

from collections import Counter

from precisionlab.sweep.plan import plan


def test_wortsman_qk_varies_only_qk_norm_over_the_high_lrs(tmp_path):
    grid = plan(["sweep=wortsman_qk"], cwd=tmp_path)
    got = Counter((c.model.qk_norm, c.optim.lr) for c in grid.configs)
    assert got == Counter({(qk, lr): 3 for qk in (False, True) for lr in (1e-2, 1e-1, 1.0)})
    assert {c.seed for c in grid.configs} == {0, 1, 2}
    assert {(c.model.n_layer, c.model.n_embd, c.precision.name, c.train.steps) for c in grid.configs} == {
        (2, 128, "fp32", 300)}
    assert {c.diagnostics.every for c in grid.configs} == {50}  # the proxies: attention logit max, log Z


def test_wortsman_zloss_turns_weight_decay_off(tmp_path):
    grid = plan(["sweep=wortsman_zloss"], cwd=tmp_path)
    assert Counter((c.optim.z_loss, c.optim.lr) for c in grid.configs) == Counter({(0.0, 1.0): 4, (1e-4, 1.0): 4})
    assert {c.optim.weight_decay for c in grid.configs} == {0.0} and {c.seed for c in grid.configs} == {0, 1, 2, 3}


def test_fp4_signs_one_lr_and_the_one_factor_pairs(tmp_path):
    grid = plan(["sweep=fp4_signs"], cwd=tmp_path)
    by_name = {c.precision.name: c.precision for c in grid.configs}
    assert set(by_name) == {"bf16", "e2m1", "mxfp4", "mxfp4_sr", "nvfp4", "nvfp4_no_sr"}
    assert {c.optim.lr for c in grid.configs} == {3e-3} and len(grid.configs) == 18
    e2m1 = by_name["e2m1"]  # E2M1 elements, no block scales, round to nearest even, LM head in BF16
    assert (e2m1.x, e2m1.w, e2m1.grad, e2m1.rounding, e2m1.scaling) == ("e2m1fn",) * 3 + ("nearest_even", "none")
    assert list(e2m1.keep.match) == ["lm_head"]
    sr = by_name["mxfp4_sr"]  # mxfp4 plus stochastic gradients, nothing else (no Hadamard)
    assert (sr.operands.dgrad_g.rounding, sr.operands.wgrad_g.rounding) == ("stochastic", "stochastic")
    assert sr.hadamard.size == by_name["mxfp4"].hadamard.size and sr.x == by_name["mxfp4"].x
