"""The results store: sweeps, runs, per-step metrics, checkpoints and sharpness values in one
database (SQLite on one machine, PostgreSQL for clusters), readable as pandas DataFrames, and
the run identity it keys them by.

    from precisionlab.store import ResultsStore
    store = ResultsStore("results/precisionlab.db")     # or "postgresql://me:pw@db-host/precisionlab"
    store.runs(sweep="default"); store.metrics(sweep="default", split="val")

The names below are imported on first use (PEP 562 `__getattr__`): importing a light module of the
package (`precisionlab.store.url`, for the CLI's default store) imports no pandas.
"""

from __future__ import annotations

from precisionlab.runtime import lazy_exports

_EXPORTS = {
    "ResultsStore": "precisionlab.store.results",
    "StoreRecorder": "precisionlab.store.recorder",
    "StoreError": "precisionlab.store.schema",
    "run_id": "precisionlab.store.identity",
    "NON_SEMANTIC_KEYS": "precisionlab.store.identity",
    "DEFAULT_STORE_PATH": "precisionlab.store.url",
    "DONE": "precisionlab.store.schema",
    "OUTCOMES": "precisionlab.store.schema",
    "STATUSES": "precisionlab.store.schema",
    "parse_store_url": "precisionlab.store.url",
}

__all__ = ["ResultsStore", "StoreRecorder", "StoreError", "run_id", "NON_SEMANTIC_KEYS", "DEFAULT_STORE_PATH",
           "DONE", "OUTCOMES", "STATUSES", "parse_store_url"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
