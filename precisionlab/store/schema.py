"""The results store's schema: its tables, what their columns hold, and its version."""

from __future__ import annotations

import math
from typing import Any

from precisionlab.store.identity import IDENTITY_VERSION

__all__ = ["SCHEMA_VERSION", "STATUSES", "OUTCOMES", "DONE", "CONFIG_COLUMNS", "OUTCOME_KEYS", "METRIC_KEYS",
           "TIME_COLUMNS", "DDL", "V3_STATEMENTS", "TABLES", "finite", "StoreError"]

# 1: precisionlab 0.1. 2: run ids of identity version 2 (meta 'identity_version'); see store.migrate.
# 3: branches (runs.parent_run_id, runs.branch_step) and the diagnostics table (V3_STATEMENTS).
SCHEMA_VERSION = 3
STATUSES = ("pending", "running", "completed", "diverged", "failed")
OUTCOMES = ("completed", "diverged", "failed")
DONE = ("completed", "diverged")  # never recomputed unless forced

# Where the runs table's columns come from in a run's config: the first
# present dotted path wins; absent everywhere -> NULL. `model` is the architecture
# (gpt2, llama; a Hugging Face model's is hf-ARCH, e.g. hf-llama, results._config_columns): a model preset (tiny, gpt2_124m, ...) leaves no name in the config,
# its sizes are in the config column. A role's format falls back to precision.format
# for a config built in Python without the roles.
CONFIG_COLUMNS = {
    "model": ("model.arch",),
    "format_x": ("precision.x", "precision.format"),
    "format_w": ("precision.w", "precision.format"),
    "format_grad": ("precision.grad", "precision.format"),
    "rounding": ("precision.rounding",),
    "lr": ("optim.lr",),
    "seed": ("seed",),
}

# What `Recorder.finish(outcome)` may carry (absent -> derived from the logged
# metrics where possible, else NULL).
OUTCOME_KEYS = ("steps_done", "final_train_loss", "final_val_loss", "min_val_loss",
                "initial_loss", "diverged_step", "spikes", "error", "wall_time")
METRIC_KEYS = ("loss", "lr", "grad_norm", "tokens", "elapsed")
TIME_COLUMNS = ("created", "started", "heartbeat", "finished")
# Every table, in an order that satisfies the foreign keys (sharpness_claims: only on stores made after 0.2).
TABLES = ("meta", "sweeps", "runs", "sweep_runs", "metrics", "checkpoints", "sharpness", "sharpness_claims",
          "diagnostics")

# Schema version 3, as statements an older store can run: new columns go last, so a store
# migrated from version 2 has the columns in the order a new one has.
V3_STATEMENTS = (
    "ALTER TABLE runs ADD COLUMN parent_run_id TEXT",   # a branch: the run whose checkpoint it starts from
    "ALTER TABLE runs ADD COLUMN branch_step INTEGER",  # and that checkpoint's step (NULL: not a branch)
    """CREATE TABLE diagnostics (
    run_id TEXT NOT NULL, step INTEGER NOT NULL,
    site TEXT NOT NULL,         -- a cast site (layer/operand), a layer, or "model"
    name TEXT NOT NULL,         -- what was measured there (saturated, flushed, cast_error, grad_cosine, ...)
    value REAL,
    PRIMARY KEY (run_id, step, site, name)
) WITHOUT ROWID""",
)
_V3 = "".join(f"{statement};\n" for statement in V3_STATEMENTS)

DDL = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sweeps (
    name    TEXT PRIMARY KEY,
    created REAL NOT NULL,      -- unix time of the first invocation
    command TEXT,               -- command line / overrides of the latest invocation
    grid    TEXT                -- JSON description of the grid
);
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,    -- run_id(config)
    config TEXT NOT NULL,       -- JSON, the resolved config
    model TEXT, format_x TEXT, format_w TEXT, format_grad TEXT, rounding TEXT, lr REAL, seed INTEGER,
    status TEXT NOT NULL CHECK (status IN {STATUSES}),
    steps_done INTEGER, final_train_loss REAL, final_val_loss REAL, min_val_loss REAL,
    initial_loss REAL, diverged_step INTEGER, spikes INTEGER, error TEXT,
    created REAL NOT NULL, started REAL, heartbeat REAL, finished REAL, wall_time REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    pid INTEGER, hostname TEXT, claim TEXT,  -- who runs it now (see the liveness rule)
    git_rev TEXT, torch_version TEXT, triton_version TEXT, precisionlab_version TEXT,
    meta TEXT                   -- JSON from Recorder.start: data fingerprint, device, ...
);
CREATE TABLE sweep_runs (
    sweep  TEXT NOT NULL REFERENCES sweeps(name),
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    PRIMARY KEY (sweep, run_id)
) WITHOUT ROWID;
CREATE TABLE metrics (
    run_id TEXT NOT NULL, step INTEGER NOT NULL, split TEXT NOT NULL,
    loss REAL, lr REAL, grad_norm REAL, tokens INTEGER, elapsed REAL,
    extra TEXT,                 -- JSON of any other logged values
    PRIMARY KEY (run_id, step, split)
) WITHOUT ROWID;
CREATE TABLE checkpoints (
    run_id TEXT NOT NULL, step INTEGER NOT NULL, path TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (run_id, step)
) WITHOUT ROWID;
CREATE TABLE sharpness (
    run_id TEXT NOT NULL, step INTEGER NOT NULL, metric TEXT NOT NULL,
    params TEXT NOT NULL,       -- canonical JSON of the metric's parameters (eps, ...)
    value REAL, created REAL NOT NULL,
    PRIMARY KEY (run_id, step, metric, params)
) WITHOUT ROWID;
CREATE TABLE sharpness_claims (  -- who measures which sharpness value now; rows live only meanwhile
    run_id TEXT NOT NULL, step INTEGER NOT NULL, metric TEXT NOT NULL, params TEXT NOT NULL,
    pid INTEGER, hostname TEXT, claimed REAL,
    PRIMARY KEY (run_id, step, metric, params)
) WITHOUT ROWID;
CREATE INDEX runs_status ON runs(status);
{_V3}
INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}');
INSERT INTO meta VALUES ('identity_version', '{IDENTITY_VERSION}');
"""


def finite(x: Any) -> Any:
    """SQLite turns NaN into NULL silently; keep Inf, make NaN an explicit None."""
    return None if isinstance(x, float) and math.isnan(x) else x


class StoreError(ValueError):
    """A results store that cannot be used: one line naming the path and the problem."""
