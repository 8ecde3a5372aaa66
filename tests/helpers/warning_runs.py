"""Synthetic runs for the early-warning tests: a runs table and train curves whose grad norm is the
signal, built from one row per run."""

from __future__ import annotations

import numpy as np
import pandas as pd


def synthetic(specs: list[dict], steps: int = 300) -> tuple[pd.DataFrame, pd.DataFrame]:
    """specs: dicts with run_id, seed, lr, diverged_step (None: completed), signal (a function of
    the step array), and optionally loss (a function of the step array; default: a curve unique to
    the run, so no two runs are bit-identical by accident). A diverged run logs steps before its
    divergence step only. Returns (runs, curves)."""
    runs, curves = [], []
    for k, spec in enumerate(specs):
        stop = spec.get("diverged_step")
        grid = np.arange(1, (stop if stop else steps + 1), dtype=float)
        loss = spec["loss"](grid) if "loss" in spec else 5.0 - grid / 1000 + k * 1e-3
        runs.append({"run_id": spec["run_id"], "seed": spec["seed"], "lr": spec.get("lr", 0.3),
                     "status": "diverged" if stop else "completed", "diverged_step": stop})
        curves.append(pd.DataFrame({"run_id": spec["run_id"], "step": grid.astype(int), "split": "train",
                                    "grad_norm": spec["signal"](grid), "loss": loss}))
    return pd.DataFrame(runs), pd.concat(curves, ignore_index=True)
