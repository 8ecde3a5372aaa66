"""Store test helpers: a run config and a recorded run with known metrics, for both backends' tests;
a store of pending runs, a damaged store file, and a pid no process has."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from helpers import compose_train
from precisionlab.config import validate
from precisionlab.store import ResultsStore, run_id
from precisionlab.store.schema import DDL, V3_STATEMENTS

DEAD_PID = 2**22 + 12345  # above Linux's pid_max default: never a live process


def make_config(lr=1e-3, fmt="e8m3", seed=0, **extra):
    return {
        "model": {"name": "tiny", "n_layer": 2, "n_embd": 64},
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


def store_with_pending_runs(path: Path, sweep: str = "p") -> ResultsStore:
    """A store holding a sweep of two registered (pending) micro runs."""
    store = ResultsStore(path)
    configs = [validate(compose_train("precision=mask", "precision.format=e8m3", f"optim.lr={lr}")) for lr in (1e-3, 3e-3)]
    store.add_sweep(sweep, command="test")
    store.register_runs(configs, sweep=sweep)
    return store


def damage(path: Path) -> None:
    """Overwrite every page but the schema's and the meta table's: the store opens, reads fail."""
    with sqlite3.connect(path) as conn:
        keep = {1, *(r for n, r in conn.execute("SELECT name, rootpage FROM sqlite_master") if "meta" in n)}
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    data = bytearray(path.read_bytes())
    for page in range(2, len(data) // size + 1):
        if page not in keep:
            data[(page - 1) * size: page * size] = b"\x5a" * size
    path.write_bytes(bytes(data))
