"""`precisionlab report` on a real micro sweep, through the installed console script:
every file written, the HTML self-contained with every plot and table, bad input one line."""

from __future__ import annotations

import base64
import csv
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import SWEEP_MICRO
from helpers.store import store_with_pending_runs
from precisionlab.analysis.dose import display_frontiers
from precisionlab.analysis.report import build
from precisionlab.analysis.tables import display_by_lr, display_by_variant, display_warning_windows
from precisionlab.cli import app
from precisionlab.store import ResultsStore

CLI = str(Path(sys.executable).with_name("precisionlab"))
STORE = Path("results") / "precisionlab.db"
# 2 formats x 2 LRs x 2 seeds; lr=30 without clipping diverges within a few steps.
GRID = ["precision.format=e8m7,e8m3", "optim.lr=1e-3,30", "seed=0,1", "optim.grad_clip=0",
        "train.checkpoint_every=4", "sweep.name=micro", "train.threads=1", *SWEEP_MICRO]
# At lr=30 every run ends diverged (judged at the end of its 8 steps), so no completed run at that LR
# gives a threshold: the early-warning tables are written (every diverged run without a threshold) and
# its figures, which draw diverged runs against their thresholds, are not (test_warning draws them).
FILES = {"report.html", "report.md", "by_format.csv", "by_format_lr.csv", "runs.csv", "sharpness.csv", "early_warning.csv",
         "loss_curves.png", "final_loss_heatmap.png", "loss_vs_lr.png", "stability_vs_bits.png", "sharpness_logit.png",
         "early_warning_windows.csv", "dose_response.png", "dose_response.csv", "frontier.csv"}


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], cwd=cwd, capture_output=True, text=True, env=os.environ.copy(), timeout=600)


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """The micro sweep, its logit sharpness, and its report in out/."""
    cwd = tmp_path_factory.mktemp("report")
    for args in (("sweep", *GRID), ("sharpness", "--device", "cpu"), ("report", "--out", "out")):
        proc = _cli(cwd, *args)
        assert proc.returncode == 0, (args, proc.stderr)
    return cwd, proc


class _Document(HTMLParser):
    """Collects what the checks need: image sources, tables (header cells, rows), external references."""

    def __init__(self):
        super().__init__()
        self.images, self.tables, self.external, self._cell = [], [], [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag in ("script", "link", "iframe") or any(v and "://" in v for k, v in attrs.items() if k in ("src", "href")):
            self.external.append((tag, attrs))
        if tag == "table":
            self.tables.append([])
        if tag == "tr":
            self.tables[-1].append([])
        if tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell)
            self._cell = None


@pytest.mark.slow
def test_report_writes_every_file_and_says_where(reported):
    cwd, proc = reported
    out = cwd / "out"
    assert {p.name for p in out.iterdir()} == FILES | {".precisionlab-report"}  # no staging folder left behind
    assert f"report: {out / 'report.html'}" in proc.stdout
    assert "sharpness logit (" in proc.stdout and "step 4" in proc.stdout
    assert "Against e8m7 (reference; " in proc.stdout
    assert "early warning\nsignal" in proc.stdout and "grad_norm" in proc.stdout
    with open(out / "early_warning.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(int(r["calibrated"]) == 0 for r in rows)  # no threshold at lr=30
    assert [int(r["diverged"]) for r in rows if r["signal"] == "grad_norm"] == [4]
    for name in FILES:
        if name.endswith(".png"):
            assert (out / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), name


@pytest.mark.slow
def test_html_is_self_contained_and_holds_every_plot_and_table(reported):
    cwd, _ = reported
    out = cwd / "out"
    doc = _Document()
    doc.feed((out / "report.html").read_text(encoding="utf-8"))
    doc.close()
    assert doc.external == []
    prefix = "data:image/png;base64,"
    assert all(src.startswith(prefix) for src in doc.images)
    embedded = sorted(base64.b64decode(src[len(prefix):]) for src in doc.images)
    assert embedded == sorted(p.read_bytes() for p in out.glob("*.png"))
    store = ResultsStore(cwd / STORE)
    report = build(store, "micro")
    store.close()  # an open sqlite3 connection lingers until garbage collection: close it, the file checks rely on it
    expected = [display_by_variant(report.by_variant), display_by_lr(report.by_lr), display_frontiers(report.dose)]
    # per format, per format x LR, the frontier, logit sharpness per step, early warning, its AUC by lead
    assert len(doc.tables) == 6
    assert doc.tables[5][1:] == display_warning_windows(report.warning_windows).astype(str).values.tolist()
    for table, frame in zip(doc.tables, expected):
        assert table[0] == list(frame.columns)
        assert table[1:] == frame.astype(str).values.tolist()
    sharpness_header = doc.tables[3][0]
    assert sharpness_header[0] == "format" and sharpness_header[1:] == ["step 4", "step 8"]
    assert [row[0] for row in doc.tables[3][1:]] == ["e8m7", "e8m3"]


@pytest.mark.slow
def test_csvs_hold_the_tables_and_agree_with_the_store(reported):
    cwd, _ = reported
    store = ResultsStore(cwd / STORE)
    runs = store.runs(sweep="micro")
    store.close()
    with open(cwd / "out" / "by_format_lr.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["format"], float(r["lr"])) for r in rows] == [("e8m7", 1e-3), ("e8m7", 30.0), ("e8m3", 1e-3), ("e8m3", 30.0)]
    for row in rows:
        mine = runs[(runs.format_x == row["format"]) & (runs.lr == float(row["lr"]))]
        assert int(row["diverged"]) == (mine.status == "diverged").sum() and int(row["runs"]) == 2
    with open(cwd / "out" / "runs.csv") as f:
        assert sorted(r["run_id"] for r in csv.DictReader(f)) == sorted(runs.run_id)
    markdown = (cwd / "out" / "report.md").read_text()
    assert all(f"]({name})" in markdown for name in FILES if name.endswith(".png"))


@pytest.mark.slow
def test_the_same_sweep_on_postgresql_gives_the_same_report(reported, postgres_url, tmp_path):
    """Sweep, sharpness and report with store.url on a PostgreSQL server: every table the report
    computes equals the SQLite one's (the same runs, curves and sharpness values)."""
    for args in (("sweep", *GRID, f"store.url={postgres_url}"), ("sharpness", "--device", "cpu", "--store", postgres_url),
                 ("report", "--out", "out", "--store", postgres_url)):
        proc = _cli(tmp_path, *args)
        assert proc.returncode == 0, (args, proc.stderr)
    assert not (tmp_path / STORE).exists()  # nothing went to the default SQLite file
    sqlite_dir, _ = reported
    for name in ("by_format.csv", "by_format_lr.csv", "sharpness.csv"):
        assert (tmp_path / "out" / name).read_text() == (sqlite_dir / "out" / name).read_text(), name
    html = (tmp_path / "out" / "report.html").read_text()
    assert postgres_url.split("@")[1] in html and postgres_url not in html  # the store is named, its password not


@pytest.mark.slow
def test_rerun_replaces_the_files_and_where_filters(reported):
    cwd, _ = reported
    proc = _cli(cwd, "report", "--sweep", "micro", "--out", "only", "--where", "format=e8m3", "--where", "lr < 1")
    assert proc.returncode == 0, proc.stderr
    with open(cwd / "only" / "by_format_lr.csv") as f:
        assert [(r["format"], r["lr"]) for r in csv.DictReader(f)] == [("e8m3", "0.001")]
    assert "filtered with --where format=e8m3 and lr < 1: 2 of 8 runs" in proc.stdout


@pytest.mark.slow
def test_compare_two_sweeps(reported):
    cwd, _ = reported
    other = [arg for arg in GRID if not arg.startswith(("sweep.name=", "seed="))]
    proc = _cli(cwd, "sweep", *other, "sweep.name=rne", "precision.rounding=nearest_even", "seed=0")
    assert proc.returncode == 0, proc.stderr
    proc = _cli(cwd, "report", "--compare", "micro", "rne")
    assert proc.returncode == 0, proc.stderr
    out = cwd / "reports" / "micro-vs-rne"
    assert {p.name for p in out.iterdir()} == {"compare.html", "compare.md", "compare.csv", "stability_vs_bits.png",
                                               ".precisionlab-report"}
    with open(out / "compare.csv") as f:
        rows = {r["format"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"e8m7", "e8m3"} and rows["e8m3"]["finished_a"] == "4" and rows["e8m3"]["finished_b"] == "2"
    doc = _Document()
    doc.feed((out / "compare.html").read_text(encoding="utf-8"))
    assert doc.external == [] and len(doc.images) == 1 and len(doc.tables) == 3
    assert doc.tables[0][0][:2] == ["format", "micro: diverged"]
    assert "micro: Against e8m7 (reference; " in proc.stdout


def _invoke(cwd, monkeypatch, *args):
    monkeypatch.chdir(cwd)
    return CliRunner().invoke(app, ["report", *args])


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--sweep", "nope"], "error: unknown sweep 'nope' in "),
    (["--out", "file.txt/sub"], "cannot create the folder (Not a directory)"),
    (["--where", "colour=red"], "unknown column 'colour'; accepted: variant, format, lr, seed"),
    (["--sweep", "micro", "--where", "format=e5m2"], "sweep 'micro' has no runs matching --where format=e5m2 (8 in all)"),
    (["--store", "missing.db"], "does not exist; run precisionlab sweep first"),
    (["--compare", "micro", "nope"], "error: unknown sweep 'nope' in "),
    (["--compare", "micro", "micro", "--sweep", "micro"], "--sweep and --compare exclude each other"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(reported, monkeypatch, args, message):
    cwd, _ = reported
    (cwd / "file.txt").write_text("not a folder")
    before = sorted(p.relative_to(cwd) for p in cwd.rglob("*"))
    result = _invoke(cwd, monkeypatch, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.relative_to(cwd) for p in cwd.rglob("*")) == before


def test_empty_store_and_not_a_store(tmp_path, monkeypatch):
    ResultsStore(tmp_path / "empty.db").close()
    (tmp_path / "text.db").write_text("hello")
    for store, message in (("empty.db", "holds no sweeps; run precisionlab sweep first"),
                           ("text.db", "is not an SQLite database")):
        result = _invoke(tmp_path, monkeypatch, "--store", store)
        assert result.exit_code == 2 and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "reports").exists()


def test_console_script_bad_input_has_no_traceback(tmp_path):
    proc = _cli(tmp_path, "report", "--store", "missing.db")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_report_of_a_sweep_without_finished_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store_with_pending_runs(tmp_path / "s.db").close()
    result = CliRunner().invoke(app, ["report", "--store", "s.db"])
    assert result.exit_code == 0, result.output
    assert "2 runs (2 pending)" in result.stdout and "no finished runs yet" in result.stdout
    written = {p.name for p in (tmp_path / "reports" / "p").iterdir()}
    assert {"report.html", "report.md", "runs.csv"} <= written and not any(n.endswith(".png") for n in written)
