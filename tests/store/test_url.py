"""Store locations (precisionlab.store.url).
"""

from __future__ import annotations

import pytest

from precisionlab.store import StoreError


def test_a_store_url_with_a_password_in_a_config_is_refused():
    """A password that reached the composed config (a config file; the command line's is taken out first)
    would be written into run.json and checkpoints: refused in one line, before anything runs."""
    from precisionlab.store.url import configured_store

    with pytest.raises(StoreError, match="holds a password, which would be written into run folders") as err:
        configured_store({"store": {"url": "postgresql://me:s3cr%2Fet@db:5432/runs", "path": None}})
    assert "s3cr" not in str(err.value)
    assert configured_store({"store": {"url": "postgresql://me@db:5432/runs", "path": None}}) == "postgresql://me@db:5432/runs"
