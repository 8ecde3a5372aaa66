"""The results store's interface (precisionlab.store.results): sharpness claims shared by processes, and
the retry window of an unreachable server.
"""

from __future__ import annotations

import os
import sqlite3
import time

import pytest

from helpers.store import DEAD_PID, store_with_pending_runs
from precisionlab.store import ResultsStore, StoreError


def test_sharpness_claims_split_the_work(tmp_path):
    store = store_with_pending_runs(tmp_path / "s.db")
    other = ResultsStore(tmp_path / "s.db")
    rid = store.runs().run_id.iloc[0]
    assert store.claim_sharpness(rid, 4, "logit", {"eps": 1e-3}) == "claimed"
    with sqlite3.connect(tmp_path / "s.db") as conn:  # as if a live other process held it: this test's parent
        conn.execute("UPDATE sharpness_claims SET pid=?", (os.getppid(),))
    conn.close()
    assert other.claim_sharpness(rid, 4, "logit", {"eps": 1e-3}) == "busy"
    assert other.claim_sharpness(rid, 4, "logit", {"eps": 1e-2}) == "claimed"  # other parameters: other work
    with sqlite3.connect(tmp_path / "s.db") as conn:  # the claimer dies: its claim is taken over
        conn.execute("UPDATE sharpness_claims SET pid=? WHERE params LIKE '%0.001%'", (DEAD_PID,))
    conn.close()
    assert other.claim_sharpness(rid, 4, "logit", {"eps": 1e-3}) == "claimed"
    other.add_sharpness(rid, 4, "logit", 1.5, {"eps": 1e-3})
    other.release_sharpness(rid, 4, "logit", {"eps": 1e-3})
    assert store.claim_sharpness(rid, 4, "logit", {"eps": 1e-3}) == "done"


def test_unreachable_server_gets_one_retry_window_said_once(own_postgres_server, monkeypatch, capsys):
    """Every write path waited out its own retry window (a sweep: ~7 x 300 s, silent). Now the
    process's transactions share one window per outage, and stderr says once that retries are under
    way. The window comes from $PRECISIONLAB_STORE_RETRY_SECONDS here (3 s)."""
    from precisionlab.store.database import RETRY_ENV

    monkeypatch.setenv(RETRY_ENV, "3")
    first, second = ResultsStore(own_postgres_server.url()), ResultsStore(own_postgres_server.url())
    assert first.retry_seconds == second.retry_seconds == 3.0
    capsys.readouterr()
    own_postgres_server.stop()
    started = time.monotonic()
    with pytest.raises(StoreError, match="still unreachable"):
        first.runs()
    assert 3.0 <= time.monotonic() - started < 15
    started = time.monotonic()
    with pytest.raises(StoreError, match="still unreachable"):
        second.add_sweep("other write path")  # the window is spent: no second one
    assert time.monotonic() - started < 2.0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: results store ") and "retrying for up to 3 s" in err[0], err
    assert own_postgres_server.password not in err[0]


def test_store_retry_seconds_setting_is_checked(monkeypatch, tmp_path):
    from precisionlab.store.database import RETRY_ENV

    monkeypatch.setenv(RETRY_ENV, "soon")
    with pytest.raises(StoreError, match="must be a number of seconds >= 0; got 'soon'"):
        ResultsStore(tmp_path / "s.db")
