"""Shared fixtures: an isolated data cache and configs composed with Hydra's Compose API (helpers/)."""

from __future__ import annotations

import pytest

from helpers import compose_train


@pytest.fixture(scope="session", autouse=True)
def precisionlab_cache(tmp_path_factory):
    """Keep the default corpus cache (and anything else cached) out of the user's home."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("precisionlab-cache")
    mp.setenv("PRECISIONLAB_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture
def train_cfg():
    """Factory: train_cfg("precision=mask", ...) -> composed micro-run DictConfig."""
    return compose_train
