"""One corpus per run id and per table: runs of one data config must have trained on the same data.

A run's id hashes its config (precisionlab.store.identity), not the data it read. The default
corpus (data.source=stdlib) is built from the Python installation's standard library, so one
config gives different corpora on different machines (scripts/corpus_info.py prints them): a
sweep resumed on another machine, or merged with `store copy`, would put runs trained on
different data under one id or into one table.

Ids stay config-only: that keeps them machine-independent (pinned in tests, the same for a
grid on every machine) and computable before any data is read (a sweep registers all its grid
points first; building the corpus per id would cost a corpus per run). Instead every run records
the fingerprint of the data it trained on (run meta "data" -> "fingerprint": runs.meta in the
store, run.json in the run folder), and the places that put runs together refuse to mix
fingerprints of one data config, with one line naming two such runs:

- `precisionlab sweep` (a resumed or extended sweep): the data this machine reads vs the
  fingerprints the store holds for the grid's data configs (`check_sweep_data`);
- `precisionlab report`: the runs of the sweep it reads (`check_one_corpus`);
- `precisionlab store copy`: the source's runs of a sweep vs the destination's runs of that sweep
  and of the same ids;
- resuming a run from its checkpoint (precisionlab.train.loop): the checkpoint's fingerprint vs
  the data read now.
- a run starting in a store (StoreRecorder.start): its fingerprint vs the runs of its sweeps,
  for machines that run one sweep at once (`check_new_run`); the run fails with that line.

Runs of *different* data configs (a grid over data.budget_bytes, say) differ in fingerprint by
design and may share a sweep. A data config is the run config's `data` node without
data.cache_dir (where the 0.2 corpus is cached, not what it holds). Runs that never started
record no fingerprint and are not compared.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from precisionlab.store.identity import canonical, dumps
from precisionlab.store.schema import StoreError

if TYPE_CHECKING:
    from precisionlab.store.database import Database

__all__ = ["data_key", "fingerprint", "recorded", "recorded_rows", "check_one_corpus", "check_new_run", "check_sweep_data"]

_CHUNK = 500  # run ids per IN (...) query


def data_key(config: Mapping[str, Any]) -> str:
    """The data config of a run config, as canonical JSON."""
    data = canonical(config.get("data") or {}, semantic=False)
    return dumps({k: v for k, v in data.items() if k != "cache_dir"})


def fingerprint(meta: Any) -> str | None:
    """The data fingerprint a run recorded in its meta, None if it recorded none (not started)."""
    data = meta.get("data") if isinstance(meta, Mapping) else None
    return data.get("fingerprint") if isinstance(data, Mapping) else None


def _mixed(runs: Iterable[tuple[str, Mapping[str, Any], str | None]]) -> tuple[tuple[str, str], tuple[str, str]] | None:
    """Two (run id, fingerprint) of one data config with different fingerprints, or None."""
    seen: dict[str, tuple[str, str]] = {}
    for rid, config, found in runs:
        if found is None:
            continue
        first = seen.setdefault(data_key(config), (rid, found))
        if first[1] != found:
            return first, (rid, found)
    return None


def _problem(where: str, a: tuple[str, str], b: tuple[str, str]) -> str:
    return (f"{where} mixes corpora: runs {a[0]} and {b[0]} have the same data config but trained on different "
            f"data (fingerprints {a[1][:12]} and {b[1][:12]}; the built-in corpus depends on the Python "
            "installation, see scripts/corpus_info.py); keep runs of each corpus in their own store")


def check_one_corpus(runs: Iterable[tuple[str, Mapping[str, Any], Any]], where: str) -> None:
    """StoreError (one line) if two of `runs` ((run id, config, meta), e.g. from `store.runs()`)
    have one data config and different data fingerprints."""
    mixed = _mixed((rid, config, fingerprint(meta)) for rid, config, meta in runs)
    if mixed:
        raise StoreError(_problem(where, *mixed))


def recorded(execute: Callable[[str, list], list[tuple]], sweep: str, run_ids: list[str]) -> list[tuple[str, Any, Any]]:
    """(run id, config, meta) of the runs of `sweep` and of `run_ids`; `execute(sql, params)` gives
    the rows of a SELECT (a store's or an open transaction's)."""
    rows = {}
    queries = [("SELECT run_id, config, meta FROM runs WHERE run_id IN (SELECT run_id FROM sweep_runs WHERE sweep=?)",
                [sweep])]
    queries += [(f"SELECT run_id, config, meta FROM runs WHERE run_id IN ({','.join('?' * len(chunk))})", chunk)
                for chunk in (run_ids[i:i + _CHUNK] for i in range(0, len(run_ids), _CHUNK))]
    for sql, params in queries:
        rows.update((row[0], row) for row in recorded_rows(execute(sql, params)))
    return list(rows.values())


def recorded_rows(rows: Iterable[tuple[str, str, str | None]]) -> list[tuple[str, Any, Any]]:
    """(run id, config, meta) rows of the runs table, JSON parsed."""
    return [(rid, json.loads(config), json.loads(meta) if meta else None) for rid, config, meta in rows]


def check_new_run(execute: Callable[[str, list], list[tuple]], run_id: str) -> None:
    """StoreError (one line) if run `run_id`, its meta just written, trained on other data than a run
    of the same data config in one of its sweeps: two machines that run one sweep at once."""
    rows = recorded_rows(execute("SELECT run_id, config, meta FROM runs WHERE run_id=? OR run_id IN (SELECT run_id FROM "
                                 "sweep_runs WHERE sweep IN (SELECT sweep FROM sweep_runs WHERE run_id=?))",
                                 [run_id, run_id]))
    check_one_corpus(sorted(rows, key=lambda row: row[0] != run_id), f"run {run_id}'s sweep")


def check_sweep_data(store: Database, sweep: str, configs: list[Mapping[str, Any]], run_ids: list[str]) -> None:
    """Before a sweep runs: StoreError (one line) if the store holds runs (of this sweep, or with
    these ids) of one of the grid's data configs trained on data other than this machine's.
    Reads each such data config once; a fresh store reads nothing."""
    from precisionlab.train.data import load_dataset

    runs = recorded(lambda sql, params: store.query(sql, params)[1], sweep, run_ids)
    check_one_corpus(runs, f"results store {store.location}")
    stored = {}
    for rid, config, meta in runs:
        if fingerprint(meta) is not None:
            stored.setdefault(data_key(config), (rid, fingerprint(meta)))
    here: dict[str, str] = {}
    for config in configs:
        key = data_key(config)
        if key in stored and key not in here:
            here[key] = load_dataset(canonical(config.get("data"), semantic=False))[2]["fingerprint"]
            if here[key] != stored[key][1]:
                raise StoreError(
                    f"sweep {sweep}: this machine's data gives fingerprint {here[key][:12]}, but run {stored[key][0]} "
                    f"in {store.location} trained on {stored[key][1][:12]} with the same data config (the built-in "
                    "corpus depends on the Python installation, see scripts/corpus_info.py); resume it where it "
                    "started, or give this machine its own store (store.path=...)")
