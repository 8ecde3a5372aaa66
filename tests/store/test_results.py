"""The results store's interface (precisionlab.store.results): sharpness claims shared by processes."""

from __future__ import annotations

import os
import sqlite3

from helpers.store import DEAD_PID, store_with_pending_runs
from precisionlab.store import ResultsStore


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

