"""What several test modules share: micro-run overrides, composed configs, an in-memory recorder,
the console script's path and the check of a one-line user error.

Oracle formats live in `helpers.oracles`; `helpers/interpreted_kernel_check.py` is a script run
under TRITON_INTERPRET=1 by `tests/kernels/test_cast_triton.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose, initialize_config_module

__all__ = ["MICRO", "SWEEP_MICRO", "CLI", "compose_train", "one_line_exit_2", "MemoryRecorder", "layer_grads"]

CLI = str(Path(sys.executable).with_name("precisionlab"))  # the console script of this environment

# A micro model and run: a few layers of width 32, a handful of steps.
MICRO = [
    "model.n_layer=2", "model.n_embd=32", "model.n_head=2",
    "train.steps=10", "train.batch_size=4", "train.seq_len=16",
    "train.eval_every=5", "train.eval_batches=2", "train.threads=1", "optim.warmup_steps=2",
]

# A micro grid point for sweeps (one layer, 8 steps; threads left to the launcher).
SWEEP_MICRO = [
    "model.n_layer=1", "model.n_embd=32", "model.n_head=2",
    "train.steps=8", "train.batch_size=4", "train.seq_len=16",
    "train.eval_every=4", "train.eval_batches=2", "optim.warmup_steps=2",
]


def compose_train(*overrides: str, micro: bool = True):
    """The `train` config with these Hydra overrides (after the micro-run ones)."""
    with initialize_config_module(config_module="precisionlab.configs", version_base="1.3"):
        return compose(config_name="train", overrides=[*(MICRO if micro else []), *overrides])


def one_line_exit_2(result, fragment: str) -> None:
    """A CliRunner `result` of bad input: exit 2, one line `error: ...` holding `fragment` on stderr, no exception."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


class MemoryRecorder:
    """A `Recorder` that keeps everything a run reports, sharpness and diagnostics included."""

    def __init__(self):
        self.meta, self.rows, self.checkpoints, self.sharpness_values, self.outcome = None, [], [], [], None
        self.diagnostic_rows = []  # (step, site, name, value)

    def start(self, meta):
        self.meta = meta

    def log(self, step, split, metrics):
        self.rows.append((step, split, metrics))

    def checkpoint(self, step, path):
        self.checkpoints.append((step, path))

    def sharpness(self, step, metric, value, params):
        self.sharpness_values.append((step, metric, value, params))

    def diagnostics(self, step, rows):
        self.diagnostic_rows += [(step, *row) for row in rows]

    def finish(self, outcome):
        self.outcome = outcome

    def losses(self, split="train"):
        return [(step, m["loss"]) for step, s, m in self.rows if s == split]


def layer_grads(layer, x, g):
    """Output, input gradient, weight gradient and bias gradient of layer(x) with upstream gradient g."""
    layer.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    y = layer(x)
    y.backward(g)
    return y.detach(), x.grad, layer.weight.grad.clone(), layer.bias.grad.clone()
