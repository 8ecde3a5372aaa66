"""The store's recorder (precisionlab.store.recorder): what a claimed run's recorder writes, and what it
refuses: an unknown outcome, a run it holds no claim on."""

from __future__ import annotations

import pytest

from helpers.store import make_config
from precisionlab.store import ResultsStore, StoreError, run_id


def test_finish_rejects_unknown_status(store):
    config = make_config()
    rid = run_id(config)
    store.claim_run(rid, config)
    rec = store.recorder(rid)
    with pytest.raises(ValueError, match="completed, diverged, failed"):
        rec.finish({"status": "done"})
    assert store.status(rid) == "running"


def test_exception_inside_recorder_records_failed(store):
    config = make_config()
    rid = run_id(config)
    store.claim_run(rid, config)
    with pytest.raises(ZeroDivisionError):
        with store.recorder(rid) as rec:
            rec.log(1, "train", {"loss": 1.0})
            1 / 0
    run = store.runs().iloc[0]
    assert run["status"] == "failed" and "ZeroDivisionError" in run["error"]
    assert len(store.metrics(rid)) == 1


def test_recorder_that_lost_its_claim_cannot_write(store):
    config = make_config()
    rid = run_id(config)
    store.claim_run(rid, config)
    slow = store.recorder(rid, flush_every=1)
    impatient = ResultsStore(store.url, stale_after=-1)  # every running run looks stale to it
    assert impatient.claim_run(rid, config)
    with pytest.raises(StoreError, match="no longer claimed"):
        slow.log(1, "train", {"loss": 1.0})
    assert store.metrics(rid).empty


def test_recorder_needs_a_claim(store):
    with pytest.raises(RuntimeError, match="claim_run"):
        store.recorder("0123456789abcdef")
