"""Shared fixtures: an isolated data cache, configs composed with Hydra's Compose API (helpers/),
and a real PostgreSQL server for the store's second backend."""

from __future__ import annotations

import os
import tempfile
import uuid

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


def _throwaway_postgres():
    """A started throwaway PostgreSQL server (fsync off). Skips the test where PostgreSQL or psycopg is
    not installed, unless PRECISIONLAB_REQUIRE_POSTGRES=1 (CI sets it): then it fails."""
    from precisionlab.store.pgserver import PostgresNotFound, ThrowawayServer

    try:
        import psycopg  # noqa: F401
        server = ThrowawayServer(tempfile.mkdtemp(prefix="precisionlab-pg-"), durable=False)
    except (ImportError, PostgresNotFound) as err:
        if os.environ.get("PRECISIONLAB_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL tests required but not possible: {err}")
        pytest.skip(f"no PostgreSQL here ({err}); apt-get install postgresql and pip install psycopg[binary]")
    server.start()
    return server


@pytest.fixture(scope="session")
def postgres_server():
    """The test process's PostgreSQL server, shared by its tests (each gets its own database)."""
    server = _throwaway_postgres()
    yield server
    server.remove()


@pytest.fixture
def own_postgres_server():
    """A PostgreSQL server of the test's own, for tests that stop or restart it."""
    server = _throwaway_postgres()
    yield server
    server.remove()


@pytest.fixture
def postgres_url(postgres_server):
    """The URL of a new, empty database on the session's server."""
    return postgres_server.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A new results store's location on each backend: an SQLite file path, then a PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "results.db")
    return request.getfixturevalue("postgres_url")
