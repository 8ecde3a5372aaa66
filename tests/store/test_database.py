"""The store's connection layer (precisionlab.store.database): connections reopened after fork, the
retry window of an unreachable server, a server restart under a writer, read-only connections."""

from __future__ import annotations

import multiprocessing as mp
import time

import pytest

from helpers.store import make_config, record
from precisionlab.store import ResultsStore, StoreError, run_id


def _fork_child_writes(store, config):
    rid = run_id(config)
    assert store.claim_run(rid, config)
    with store.recorder(rid) as rec:
        rec.log(1, "train", {"loss": 1.0})
        rec.finish({"status": "completed"})


def test_connection_is_reopened_after_fork(store):
    parent = make_config(seed=0)
    record(store, parent)  # the parent now holds an open connection
    child = mp.get_context("fork").Process(target=_fork_child_writes, args=(store, make_config(seed=1)))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    record(store, make_config(seed=2))  # and the parent's connection still works
    assert sorted(store.runs()["seed"]) == [0, 1, 2]


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


@pytest.mark.slow
def test_server_restart_mid_run_loses_nothing(own_postgres_server):
    store = ResultsStore(own_postgres_server.url())
    config = make_config()
    rid = run_id(config)
    assert store.claim_run(rid, config, "restart")
    with store.recorder(rid, flush_every=10) as rec:
        for step in range(1, 101):
            rec.log(step, "train", {"loss": 1.0 / step})
            if step == 45:  # rows 41-45 are buffered, rows 1-40 written; the connection is cut here
                own_postgres_server.restart(down_seconds=1.5)
        rec.finish({"status": "completed"})
    run = store.runs().iloc[0]
    assert run["status"] == "completed" and run["attempts"] == 1 and run["steps_done"] == 100
    assert store.metrics(rid)["step"].tolist() == list(range(1, 101))
    assert store.metrics(rid)["loss"].tolist() == [1.0 / s for s in range(1, 101)]


def test_unreachable_for_longer_than_retry_seconds_is_one_line(own_postgres_server):
    store = ResultsStore(own_postgres_server.url(), retry_seconds=1.0)
    own_postgres_server.stop()
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"still unreachable .* after 1 s of retries") as caught:
        store.runs()
    assert time.monotonic() - started < 10 and own_postgres_server.password not in str(caught.value)


def test_read_only_connection_cannot_write(postgres_url):
    record(ResultsStore(postgres_url), make_config())
    reader = ResultsStore(postgres_url, read_only=True)
    assert len(reader.runs()) == 1
    with pytest.raises(StoreError, match="read-only transaction"):
        reader.add_sweep("nope")
