"""The results store: sweeps, runs, per-step metrics, checkpoints and sharpness values in one
database (SQLite on one machine, PostgreSQL for clusters), readable as pandas DataFrames, and
the run identity it keys them by.

    from precisionlab.store import ResultsStore
    store = ResultsStore("results/precisionlab.db")     # or "postgresql://me:pw@db-host/precisionlab"
    store.runs(sweep="default"); store.metrics(sweep="default", split="val")
"""

from precisionlab.store.identity import NON_SEMANTIC_KEYS, run_id
from precisionlab.store.recorder import StoreRecorder
from precisionlab.store.results import ResultsStore
from precisionlab.store.schema import DONE, OUTCOMES, STATUSES, StoreError
from precisionlab.store.url import DEFAULT_STORE_PATH, parse_store_url

__all__ = ["ResultsStore", "StoreRecorder", "StoreError", "run_id", "NON_SEMANTIC_KEYS", "DEFAULT_STORE_PATH",
           "DONE", "OUTCOMES", "STATUSES", "parse_store_url"]
