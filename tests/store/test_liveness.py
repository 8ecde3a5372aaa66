"""Who holds a run (precisionlab.store.liveness): a running row of a live process is not taken, one whose
process died or whose heartbeat went stale is; the lease keeps a quiet run's heartbeat fresh."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

from helpers.store import make_config
from precisionlab.store import ResultsStore, run_id


def test_running_run_of_another_live_process_is_not_claimed(store, tmp_path):
    config = make_config()
    rid = run_id(config)
    script = textwrap.dedent(f"""
        import sys, time
        from precisionlab.store import ResultsStore
        store = ResultsStore({store.url!r})
        assert store.claim_run({rid!r}, {config!r})
        print("claimed", flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "claimed"
        assert not store.claim_run(rid, config)
        assert not store.claim_run(rid, config, force=True)  # never two live copies of one run
        child.kill()
        while not open(f"/proc/{child.pid}/stat").read().rpartition(")")[2].split()[0] == "Z":
            time.sleep(0.01)
        assert store.claim_run(rid, config)  # killed and not yet reaped (a zombie) is dead too
    finally:
        child.kill()
        child.wait()


def test_running_on_another_host_is_interrupted_only_when_stale(store):
    config = make_config()
    rid = run_id(config)
    store.claim_run(rid, config)
    store.write(lambda c: c.execute("UPDATE runs SET hostname='node-17', pid=1, claim='theirs', heartbeat=? "
                                     "WHERE run_id=?", (time.time() - store.stale_after / 2, rid)))
    assert not store.claim_run(rid, config)
    store.write(lambda c: c.execute("UPDATE runs SET heartbeat=? WHERE run_id=?",
                                     (time.time() - store.stale_after - 1, rid)))
    assert store.claim_run(rid, config)


@pytest.mark.slow
def test_lease_keeps_a_quiet_run_alive_on_another_host_and_lets_it_go_when_killed(store_url):
    """A worker on "another host" (so no pid check can help) that writes nothing for longer than
    stale_after is still alive by its lease; killed, it is interrupted once stale_after passes."""
    config = make_config()
    rid = run_id(config)
    script = textwrap.dedent(f"""
        import time
        import precisionlab.store.liveness as liveness
        liveness.HOST = "node-b"
        import precisionlab.store.results as results
        results.HOST = "node-b"
        from precisionlab.store import ResultsStore
        store = ResultsStore({store_url!r}, stale_after=2.0)
        assert store.claim_run({rid!r}, {config!r})
        rec = store.recorder({rid!r})
        print("claimed", flush=True)
        time.sleep(600)  # a long step: no writes of its own
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "claimed"
        store = ResultsStore(store_url, stale_after=2.0)
        assert store.runs()["hostname"].tolist() == ["node-b"]
        time.sleep(4)  # twice stale_after without a write from the run itself
        assert not store.claim_run(rid, config)
        child.send_signal(signal.SIGKILL)
        child.wait()
        killed = time.monotonic()
        while not store.claim_run(rid, config):
            assert time.monotonic() - killed < 10
            time.sleep(0.2)
        assert time.monotonic() - killed >= 1.0  # not before its last heartbeat went stale (every 1 s, stale at 2 s)
    finally:
        child.kill()
        child.wait()
