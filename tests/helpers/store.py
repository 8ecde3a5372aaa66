"""Store test helpers: a run config and a recorded run with known metrics, for both backends' tests."""

from __future__ import annotations

from precisionlab.store import run_id
from precisionlab.store.schema import DDL, V3_STATEMENTS


def make_config(lr=1e-3, fmt="e8m3", seed=0, **extra):
    return {
        "model": {"arch": "llama", "n_layer": 2, "n_embd": 64},
        "precision": {"format": fmt, "rounding": "toward_zero"},
        "optim": {"lr": lr, "weight_decay": 0.1},
        "train": {"steps": 20, "device": "cpu", "threads": 1},
        "seed": seed,
        **extra,
    }


def record(store, config, steps=10, sweep=None, status="completed", checkpoint_every=None, diagnostics=False,
           meta=None, **outcome):
    """Claim and record a run whose train loss at step s is 10 - s/10 and val loss every 5 steps is 10 - s/20
    (with `diagnostics`, two diagnostics rows every 5 steps: saturated s/100 at fc/fwd_x, grad_cosine 1 - s/100)."""
    rid = run_id(config)
    assert store.claim_run(rid, config, sweep)
    with store.recorder(rid, flush_every=3) as rec:
        rec.start(meta or {"device": "cpu", "data_fingerprint": "abc"})
        for step in range(1, steps + 1):
            rec.log(step, "train", {"loss": 10 - step / 10, "lr": 1e-3, "grad_norm": 0.5, "tokens": 64 * step,
                                    "elapsed": 0.01 * step})
            if step % 5 == 0:
                rec.log(step, "val", {"loss": 10 - step / 20})
                if diagnostics:
                    rec.diagnostics(step, [("fc/fwd_x", "saturated", step / 100), ("model", "grad_cosine", 1 - step / 100)])
            if checkpoint_every and step % checkpoint_every == 0:
                rec.checkpoint(step, f"ckpt/{rid}/{step}.pt")
        rec.finish({"status": status, **outcome})
    return rid


def v2_ddl() -> str:
    """Schema version 2: today's DDL without version 3's statements."""
    v3 = "".join(f"{statement};\n" for statement in V3_STATEMENTS)
    assert v3 in DDL
    return DDL.replace(v3, "").replace("('schema_version', '3')", "('schema_version', '2')")
