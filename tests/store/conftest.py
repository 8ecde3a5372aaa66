"""Fixtures shared by the store's tests."""

from __future__ import annotations

import pytest

from precisionlab.store import ResultsStore


@pytest.fixture
def store(store_url):
    """A new results store on each backend (SQLite, then PostgreSQL)."""
    return ResultsStore(store_url)
