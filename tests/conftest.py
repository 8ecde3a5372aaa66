"""Shared fixtures: an isolated data cache and configs composed with Hydra's Compose API."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module

# A micro model and run: a few layers of width 32, a handful of steps.
MICRO = [
    "model.n_layer=2", "model.n_embd=32", "model.n_head=2",
    "train.steps=10", "train.batch_size=4", "train.seq_len=16",
    "train.eval_every=5", "train.eval_batches=2", "train.threads=1", "optim.warmup_steps=2",
]


@pytest.fixture(scope="session", autouse=True)
def precisionlab_cache(tmp_path_factory):
    """Keep the default corpus cache (and anything else cached) out of the user's home."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("precisionlab-cache")
    mp.setenv("PRECISIONLAB_CACHE", str(path))
    yield path
    mp.undo()


def compose_train(*overrides: str, micro: bool = True):
    """The `train` config with these Hydra overrides (after the micro-run ones)."""
    with initialize_config_module(config_module="precisionlab.configs", version_base="1.3"):
        return compose(config_name="train", overrides=[*(MICRO if micro else []), *overrides])


@pytest.fixture
def train_cfg():
    """Factory: train_cfg("precision=mask", ...) -> composed micro-run DictConfig."""
    return compose_train
