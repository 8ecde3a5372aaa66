"""The results store's interface (precisionlab.store.results): sharpness claims shared by processes, the
runs table's model column."""

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



def test_the_model_column_names_the_architecture_and_marks_hugging_face_models(tmp_path):
    store = ResultsStore(tmp_path / "s.db")
    configs = [{"model": {"arch": "llama"}, "seed": 0}, {"model": {"arch": "hf", "hf": {"arch": "qwen2"}}, "seed": 0},
               {"model": {"arch": "hf", "hf": {"arch": "llama"}}, "seed": 0}]
    store.register_runs(configs)
    assert sorted(store.runs().model) == ["hf-llama", "hf-qwen2", "llama"]
