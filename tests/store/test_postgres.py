"""The store's second backend and what clusters need of both: store URLs, atomic claims
across processes, databases that are not (yet) this version's store, copying sweeps between
stores, and bad URLs / unreachable servers / wrong passwords as one line."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from helpers.store import make_config, record, v2_ddl
from precisionlab.cli import app
from precisionlab.store import ResultsStore, StoreError, parse_store_url, run_id
from precisionlab.store.copy import copy_sweeps
from precisionlab.store.url import redact


CLI = str(Path(sys.executable).with_name("precisionlab"))


# --------------------------------------------------------------------------- URLs


def test_store_urls(tmp_path):
    assert parse_store_url("results/x.db", tmp_path).target == str(tmp_path / "results" / "x.db")
    assert parse_store_url("sqlite:///results/x.db", tmp_path).target == str(tmp_path / "results" / "x.db")  # relative
    assert parse_store_url("sqlite:////abs/x.db", tmp_path).target == "/abs/x.db"  # four slashes: absolute
    assert parse_store_url("sqlite:///results/x.db", tmp_path).url == f"sqlite:///{tmp_path}/results/x.db"
    for scheme in ("postgresql", "postgresql+psycopg", "postgres", "PostgreSQL"):
        where = parse_store_url(f"{scheme}://me:s3cret@db:5432/runs")
        assert where.backend == "postgresql" and where.target == "postgresql://me:s3cret@db:5432/runs"
        assert where.shown == "postgresql://me:***@db:5432/runs"
    assert redact("postgresql://db/runs?user=me&password=s3cret") == "postgresql://db/runs?user=me&password=***"


@pytest.mark.parametrize("url, message", [
    ("mysql://me@db/runs", "store URL scheme 'mysql' is not supported"),
    ("sqlite://", "names no database file"),
    ("sqlite:///:memory:", "in-memory store is not shared"),
    ("postgresql://me:s3cret@db:port/runs", "has port 'port', expected a number"),
    ("postgresql://me:s3cret@[db/runs", "is malformed"),
    ("postgresql://me:s3cret@db/runs?bogus=1", "is malformed"),
])
def test_bad_store_urls_say_what_is_accepted_and_never_show_the_password(url, message):
    with pytest.raises(StoreError, match=message) as caught:
        ResultsStore(url)
    text = str(caught.value)
    assert "s3cret" not in text and len(text.splitlines()) == 1
    assert "accepted" in text or "sqlite:///" in text


# --------------------------------------------------------------------------- bad input at the command line


def _one_line_exit_2(args, cwd):
    started = time.monotonic()
    done = subprocess.run([CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - started
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in done.stderr, done.stderr
    return lines[0], seconds


@pytest.mark.slow
def test_unreachable_server_wrong_password_malformed_url_fail_fast(tmp_path, postgres_server, postgres_url):
    closed = f"postgresql://precisionlab:x@127.0.0.1:{_closed_port()}/precisionlab"
    wrong = postgres_url.replace(postgres_server.password, "not-the-password")
    cases = [
        (["report", "--store", closed], "cannot connect"),
        (["report", "--store", wrong], "password authentication failed"),
        (["report", "--store", "postgresql://me@db:x/runs"], "expected a number"),
        (["report", "--store", postgres_url], "holds no results store yet"),  # reachable, but empty
        (["sweep", f"store.url={closed}", "seed=0"], "cannot connect"),
        (["sweep", f"store.url={wrong}", "seed=0"], "password authentication failed"),
        (["sweep", "store.url=mysql://db/x", "seed=0"], "scheme 'mysql' is not supported"),
        (["store", "copy", wrong, str(tmp_path / "x.db")], "password authentication failed"),
    ]
    for args, message in cases:
        line, seconds = _one_line_exit_2(args, tmp_path)
        assert message in line and "not-the-password" not in line, (args, line)
        assert seconds < 30, (args, seconds)  # connect timeout 5 s, no retries when opening; the rest is start-up
    assert os.listdir(tmp_path) == []  # nothing written: no store file, no run folder


def _closed_port() -> int:
    from precisionlab.store.pgserver import free_port

    return free_port()  # bound and released: nothing listens there


# --------------------------------------------------------------------------- claims


def _claim(url, config, barrier, results):
    barrier.wait()
    results.put(ResultsStore(url).claim_run(run_id(config), config, "race"))


@pytest.mark.slow
def test_eight_processes_claiming_one_run_give_it_to_exactly_one(store_url):
    ResultsStore(store_url)  # exists before the race: the race is about the claim
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(store_url, make_config(), barrier, results)) for _ in range(8)]
    for p in procs:
        p.start()
    won = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 8
    assert sorted(won) == [False] * 7 + [True]
    assert ResultsStore(store_url).runs()["attempts"].tolist() == [1]


# --------------------------------------------------------------------------- databases that are not this version's store


def test_a_database_holding_other_tables_is_refused(postgres_url):
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE runs (id int)")
    with pytest.raises(StoreError, match="has tables runs but no meta table"):
        ResultsStore(postgres_url)


def test_a_version_2_database_is_migrated_once_and_read_only_openers_refuse_it(postgres_url):
    import psycopg

    from precisionlab.store.postgres import postgres_ddl

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(postgres_ddl(v2_ddl()))
    with pytest.raises(StoreError, match="unknown schema version '2'"):
        ResultsStore(postgres_url, read_only=True)
    record(ResultsStore(postgres_url), make_config())
    runs = ResultsStore(postgres_url, read_only=True).runs()
    assert list(runs.columns[-2:]) == ["parent_run_id", "branch_step"] and runs.branch_step.isna().all()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("3",)
        assert conn.execute("SELECT COUNT(*) FROM diagnostics").fetchone() == (0,)


# --------------------------------------------------------------------------- store copy


def _tables(store: ResultsStore) -> dict[str, pd.DataFrame]:
    """Every row of a store's tables, in a backend-independent order and form."""
    keys = {"sweeps": ["name"], "runs": ["run_id"], "sweep_runs": ["sweep", "run_id"],
            "metrics": ["run_id", "split", "step"], "checkpoints": ["run_id", "step"],
            "sharpness": ["run_id", "step", "metric", "params"], "diagnostics": ["run_id", "step", "site", "name"]}
    return {table: store.read(f"SELECT * FROM {table}").sort_values(key).reset_index(drop=True)
            for table, key in keys.items()}


def _fill(store: ResultsStore) -> None:
    for seed in range(3):
        rid = record(store, make_config(seed=seed), sweep="grid", checkpoint_every=5, diagnostics=True)
        store.add_sharpness(rid, 5, "logit", 0.5 + seed, {"eps": 1e-3})
    record(store, make_config(seed=9), sweep="other")
    store.add_sweep("grid", command="precisionlab sweep seed=0,1,2", grid={"seed": [0, 1, 2]})


def test_copy_round_trip_sqlite_postgres_sqlite_is_exact_and_idempotent(tmp_path, postgres_url):
    source = ResultsStore(tmp_path / "source.db")
    _fill(source)
    server = ResultsStore(postgres_url)
    back = ResultsStore(tmp_path / "back.db")
    (to_server,) = copy_sweeps(source, server, ["grid"])
    assert (to_server.runs, to_server.copied, to_server.kept, to_server.metrics, to_server.checkpoints,
            to_server.sharpness, to_server.diagnostics) == (3, 3, 0, 36, 6, 3, 12)
    copy_sweeps(server, back)
    expected = {t: df for t, df in _tables(source).items()}
    expected["runs"] = expected["runs"][expected["runs"].seed != 9].reset_index(drop=True)
    for table in ("sweep_runs", "metrics"):
        expected[table] = expected[table][expected[table].run_id != run_id(make_config(seed=9))].reset_index(drop=True)
    expected["sweeps"] = expected["sweeps"][expected["sweeps"].name == "grid"].reset_index(drop=True)
    for table, df in _tables(back).items():
        pd.testing.assert_frame_equal(df, expected[table], check_dtype=False, obj=table)
    before = _tables(server)
    again = copy_sweeps(source, server, ["grid"])  # idempotent: nothing changes
    assert again[0].copied == 3
    for table, df in _tables(server).items():
        pd.testing.assert_frame_equal(df, before[table], obj=table)


def test_copy_keeps_a_run_done_in_the_destination_and_updates_the_rest(tmp_path, postgres_url):
    source, destination = ResultsStore(postgres_url), ResultsStore(tmp_path / "laptop.db")
    unfinished, finished = make_config(seed=0), make_config(seed=1)
    record(destination, unfinished, sweep="grid", steps=12)  # done here ...
    source.register_runs([unfinished], sweep="grid")         # ... pending there
    record(source, finished, sweep="grid", steps=7)
    (result,) = copy_sweeps(source, destination)
    assert (result.copied, result.kept) == (1, 1)
    runs = destination.runs(sweep="grid").set_index("seed")
    assert runs.status.to_dict() == {0: "completed", 1: "completed"}
    assert runs.steps_done.to_dict() == {0: 12, 1: 7}


def test_store_copy_command(tmp_path, postgres_url, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fill(ResultsStore(postgres_url))
    runner = CliRunner()
    done = runner.invoke(app, ["store", "copy", postgres_url, "laptop.db", "--sweep", "grid"])
    assert done.exit_code == 0, done.output
    assert ("sweep grid: 3 runs, 3 copied; 36 metric rows, 6 checkpoint rows, 3 sharpness values, "
            "12 diagnostics rows") in done.stdout
    assert "***" in done.stdout and postgres_url not in done.stdout  # the password is never printed
    assert ResultsStore("laptop.db").runs(sweep="grid")["seed"].tolist() == [0, 1, 2]
    for args, message in [
        (["store", "copy", postgres_url, "laptop.db", "--sweep", "nope"], "unknown sweep 'nope'"),
        (["store", "copy", "missing.db", "laptop.db"], "does not exist"),
        (["store", "copy", "laptop.db", str(tmp_path / "laptop.db")], "same results store"),
    ]:
        bad = runner.invoke(app, args)
        assert bad.exit_code == 2 and bad.stderr.startswith("error: ") and message in bad.stderr, (args, bad.output)
        assert len(bad.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- a password never written or printed

PLANTED = "Pl4nted/se@cr:et%9ZqTa1l"  # '/', '@', ':' and '%': what broke the redaction


def _planted_store(server) -> str:
    """A database of its own owned by a role whose password is PLANTED -> its URL (the password percent-encoded)."""
    import psycopg
    from psycopg import sql
    from urllib.parse import quote

    with psycopg.connect(server.url("postgres"), autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE ROLE planted LOGIN PASSWORD {}").format(sql.Literal(PLANTED)))
        conn.execute("CREATE DATABASE planted OWNER planted")
    return f"postgresql://planted:{quote(PLANTED, safe='')}@127.0.0.1:{server.port}/planted"


def _leaks(text: bytes) -> list[str]:
    """The pieces of PLANTED (whole, percent-encoded, or a fragment a redaction cut off) found in `text`."""
    from urllib.parse import quote

    # fragments of 5 or more characters: shorter ones occur by chance in embedded base64 images and binary files
    needles = {PLANTED, quote(PLANTED, safe=""), "Pl4nted", "se@cr", "et%9ZqTa1l", "9ZqTa1l", "cr%3Aet", "se%40cr"}
    return sorted(n for n in needles if n.encode() in text)


@pytest.mark.slow
def test_a_planted_password_is_never_written_or_printed(tmp_path, own_postgres_server):
    """A sweep (two runs with checkpoints and sharpness), `train`, `sharpness`, `report`, `store copy` and
    bad input naming a store URL with the password in it: no file any of them writes (run folders,
    .hydra/, run.json, checkpoints, the report, the copied store) and no line they print holds it,
    whole or in part. The runs reach the server: the password went from the URL to libpq."""
    url = _planted_store(own_postgres_server)
    env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGPASSFILE")}
    env["HOME"] = str(tmp_path / "home")  # no ~/.pgpass: the URL's password is the only one
    micro = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "train.steps=8", "train.batch_size=4",
             "train.seq_len=16", "train.eval_every=4", "train.eval_batches=2", "optim.warmup_steps=2"]
    commands = [  # (command line, expected exit code)
        (["sweep", f"store.url={url}", "sweep.name=planted", "sweep=fp4", "precision=bf16", "optim.lr=3e-3", "seed=0,1",
          "train.checkpoint_every=4",
          "sharpness.every=4", "sharpness.metrics=[logit]", *micro], 0),
        (["train", f"store.url={url}", "seed=5", "train.checkpoint_every=4", "train.threads=1", *micro], 0),
        (["sharpness", "--store", url, "--sweep", "planted", "--metric", "keskar"], 0),
        (["report", "--store", url, "--sweep", "planted", "--out", "rep"], 0),
        (["store", "copy", url, "copy.db"], 0),
        (["sweep", f"store.url={url.replace('%2F', '/')}", "seed=0", *micro], 2),   # the password's '/' not encoded
        (["sweep", f"store.url={url.replace('%25', '%')}", "seed=0", *micro], 2),   # its '%' not encoded
        (["report", "--store", url.replace("%2F", "/")], 2),
        (["store", "copy", url.replace("%40", "@"), "other.db"], 2),
    ]
    printed = []
    for args, code in commands:
        done = subprocess.run([CLI, *args], cwd=tmp_path, capture_output=True, env=env, timeout=600)
        assert done.returncode == code, (args[0], done.stderr.decode()[-2000:])
        printed.append((args[0], done.stdout + done.stderr))
    store = ResultsStore(url)
    assert set(store.runs(sweep="planted").status) == {"completed"} and len(store.runs()) == 3
    assert len(store.checkpoints()) == 6 and len(store.sharpness()) > 0
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "run.json" for p in written) and any(p.suffix == ".pt" for p in written)
    assert any(p.parent.name == ".hydra" for p in written) and (tmp_path / "rep" / "report.md").is_file()
    leaks = [f"{p.relative_to(tmp_path)}: {_leaks(p.read_bytes())}" for p in written if _leaks(p.read_bytes())]
    leaks += [f"{cmd} output: {_leaks(text)}" for cmd, text in printed if _leaks(text)]
    stored = store.read("SELECT * FROM runs", []).to_json() + store.sweeps().to_json()
    leaks += [f"the store's runs and sweeps: {_leaks(stored.encode())}"] if _leaks(stored.encode()) else []
    assert not leaks, "\n".join(leaks)
