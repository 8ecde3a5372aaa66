"""Writing a report's files (precisionlab.analysis.render): a folder of its own under --out, swapped in
whole, never a user's folder, nothing left behind by a failed or killed report, names from the store
never used as paths, and report.md showing stored names and values as the text they are.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import one_line_exit_2
from helpers.store import DEAD_PID, make_config, record, store_with_pending_runs
from precisionlab.analysis import render
from precisionlab.analysis.report import ReportError, build
from precisionlab.cli import app
from precisionlab.store import ResultsStore


def test_report_never_uses_an_unsafe_stored_name_as_a_path(tmp_path, monkeypatch):
    """A store written by other means may hold any name: the report refuses to make it a folder."""
    monkeypatch.chdir(tmp_path)
    store_with_pending_runs(tmp_path / "s.db", sweep="../../escaped").close()
    result = CliRunner().invoke(app, ["report", "--store", "s.db"])
    assert result.exit_code == 2 and "is not usable as a folder name" in result.stderr and "--out" in result.stderr
    assert not (tmp_path.parent / "escaped").exists() and not (tmp_path / "reports").exists()
    result = CliRunner().invoke(app, ["report", "--store", "s.db", "--out", "mine"])  # the user's own path: fine
    assert result.exit_code == 0, result.output
    assert (tmp_path / "mine" / "report.html").is_file()


def test_report_file_names_from_the_store_stay_inside_out(tmp_path):
    with pytest.raises(ReportError, match="plain names inside --out"):
        render._write_files({"sharpness_../../x.png": b"png"}, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def _report_files(out: Path) -> dict[str, bytes]:
    """The report's files in `out` (its marker file aside: every report folder holds one)."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != render.MARKER}


def test_report_swap_replaces_the_whole_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "reports" / "p"
    render._write_files({"report.html": "old", "sharpness_logit.png": b"old"}, out)
    render._write_files({"report.html": "new", "runs.csv": "new"}, out)
    assert _report_files(out) == {"report.html": b"new", "runs.csv": b"new"}  # no stale sharpness plot
    assert sorted(p.name for p in out.parent.iterdir()) == ["p"]  # no staging folder left


def test_report_refuses_a_folder_with_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ReportError, match=r"holds files that are not a report's \(notes.txt\)"):
        render._write_files({"report.html": "new"}, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_kill_during_report_leaves_nothing_behind_next_time(tmp_path, monkeypatch):
    """What a `report` killed while writing or swapping leaves, as a dead process's files: its staging
    folder (new or old files), the legacy staging folder inside out, and an old report moved aside
    when the kill fell between the two renames of the fallback swap."""
    monkeypatch.chdir(tmp_path)
    reports = tmp_path / "reports"
    out = reports / "p"
    render._write_files({"report.html": "old"}, out)
    (reports / f".p.report-{DEAD_PID}-0123abcd").mkdir()
    (reports / f".p.report-{DEAD_PID}-0123abcd" / "report.html").write_text("half")
    (reports / f".q.report-{os.getpid()}-0123abcd").mkdir()  # another report's, alive: left alone
    (out / ".report-x1y2z3").mkdir()  # the old code's staging folder (tempfile name, no pid)
    render._write_files({"report.html": "new"}, out)
    assert _report_files(out) == {"report.html": b"new"}
    assert sorted(p.name for p in reports.iterdir()) == [f".q.report-{os.getpid()}-0123abcd", "p"]
    # killed between the fallback's two renames: no out, the whole old report aside
    os.rename(out, reports / f".p.old-{DEAD_PID}-89abcdef")
    render._clean_stale(out)
    assert _report_files(out) == {"report.html": b"new"}


def test_report_that_fails_to_render_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = build(store_with_pending_runs(tmp_path / "s.db"))
    monkeypatch.setattr(render.plots, "figures", lambda r: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        render.write(report, tmp_path / "reports" / "p")
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize("through_link", [True, False])
def test_report_never_replaces_a_users_folder_named_like_a_report(tmp_path, monkeypatch, through_link):
    """A folder holding a report.md and runs.csv of the user's own: before, it was replaced and they were lost."""
    monkeypatch.chdir(tmp_path)
    store_with_pending_runs(tmp_path / "s.db").close()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes")
    (mine / "runs.csv").write_text("my,data")
    if through_link:
        (tmp_path / "out").symlink_to(mine)
    result = CliRunner().invoke(app, ["report", "--store", "s.db", "--out", "out" if through_link else "mine"])
    one_line_exit_2(result, "symbolic link" if through_link else "did not write")
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == {"report.md": b"my notes", "runs.csv": b"my,data"}
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("s.db")) == sorted(
        ["mine", *(["out"] if through_link else [])])


def test_report_out_through_a_dangling_link_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store_with_pending_runs(tmp_path / "s.db").close()
    (tmp_path / "out").symlink_to(tmp_path / "nowhere" / "target")
    (tmp_path / "up").symlink_to(tmp_path / "gone")
    for out, fragment in (("out", "symbolic link"), ("up/r", "is a symbolic link to a missing folder")):
        one_line_exit_2(CliRunner().invoke(app, ["report", "--store", "s.db", "--out", out]), fragment)
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "gone").exists()


def test_report_replaces_its_own_earlier_report(tmp_path, monkeypatch):
    """The marker is what lets a report replace its folder (and a report from before the marker too)."""
    monkeypatch.chdir(tmp_path)
    store_with_pending_runs(tmp_path / "s.db").close()
    for _ in range(2):
        result = CliRunner().invoke(app, ["report", "--store", "s.db", "--out", "r"])
        assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / render.MARKER).is_file() and (tmp_path / "r" / "report.md").is_file()
    (tmp_path / "r" / render.MARKER).unlink()  # as an older precisionlab wrote it: recognised by its page
    assert CliRunner().invoke(app, ["report", "--store", "s.db", "--out", "r"]).exit_code == 0
    (tmp_path / "r" / "report.html").write_text("<html>my own page</html>")
    (tmp_path / "r" / render.MARKER).unlink()
    one_line_exit_2(CliRunner().invoke(app, ["report", "--store", "s.db", "--out", "r"]), "did not write")


def test_report_md_renders_names_values_and_command_as_text(tmp_path, monkeypatch):
    """Names, config values and the command line holding HTML and Markdown: a CommonMark renderer
    (markdown-it-py, as independent oracle) shows them as the text they are, no tag of their own;
    a backtick in a value does not end its code span. Before, <script> and <img onerror> went into
    report.md raw, and report.html escaped them."""
    import html as html_module

    from markdown_it import MarkdownIt
    monkeypatch.chdir(tmp_path)
    sweep, command = "x`y*z*", "precisionlab sweep 'a=<img src=x onerror=alert(1)>' b=`c`"
    labels = ["<script>alert(1)</script>", "_[link](http://evil)_ | cell"]
    store = ResultsStore(tmp_path / "s.db")
    store.add_sweep(sweep, command=command)
    for label, rounding in zip(labels, ("toward_zero", "nearest_even")):  # one format, two recipes: named by label
        for seed in (0, 1):
            record(store, make_config(seed=seed, precision={"name": label, "format": "e8m3", "rounding": rounding},
                                      data={"path": "<img src=y onerror=alert(2)>.txt"}), sweep=sweep)
    store.close()
    result = CliRunner().invoke(app, ["report", "--store", "s.db", "--out", "r"])
    assert result.exit_code == 0, result.output
    rendered = MarkdownIt("commonmark").enable("table").render((tmp_path / "r" / "report.md").read_text())
    assert "<script" not in rendered and "onerror" not in re.sub(r"onerror=alert\(\d\)&gt;", "", rendered) and "<a " not in rendered
    assert all((tmp_path / "r" / src).is_file() for src in re.findall(r'<img src="([^"]*)"', rendered))  # ours only
    text = html_module.unescape(re.sub(r"<[^>]+>", "", rendered))
    assert command in text and all(label in text for label in labels), text[:2000]
    assert f"<h1>Sweep <code>{html_module.escape(sweep, quote=False)}</code></h1>" in rendered
