"""The report's numerical diagnostics section, on a store built here with known rows.

Hand-worked values (dyadic, so every mean is exact); fp32 runs report only gradient fidelity,
e8m3 runs (seeds 0 and 1) report at steps 5 and 10:

  site / name                          seed 0 (5, 10)    seed 1 (5, 10)    per step     over steps
  blocks.0.attn.c_attn/fwd_x saturated 0.125, 0.375      0.375, 0.625      0.25, 0.5    0.375
  lm_head/fwd_w saturated              0.0625 always                                    0.0625
  blocks.0.attn.c_attn/dgrad_g         saturated 0, flushed 0.5, cast_error 0.25 always
  model grad_cosine                    0.875, 0.75       0.625, 0.5        0.75, 0.625  min 0.625
  attn_logit_max blocks.0 / blocks.1   3 / 4 at step 5, 5 / 2 at step 10 (both seeds)   max 5
  model log_z                          5.5, 6                                           max 6
  update_ratio                         c_attn.weight 0.01, c_attn.bias 0.5 (biases not counted)
"""

from __future__ import annotations

import base64
import io

import pandas as pd
import pytest

from precisionlab.analysis import render
from precisionlab.analysis.diagnostics import by_step, site_means, summary, worst_sites
from precisionlab.analysis.report import build
from precisionlab.store import ResultsStore, run_id

FWD_X, DGRAD_G, HEAD_W = "blocks.0.attn.c_attn/fwd_x", "blocks.0.attn.c_attn/dgrad_g", "lm_head/fwd_w"


def _rows(fmt, seed, step):
    if fmt is None:
        return [("model", "grad_cosine", 1.0)]
    late = step == 10
    return [
        (FWD_X, "saturated", [0.125, 0.375, 0.375, 0.625][2 * seed + late]), (FWD_X, "flushed", 0.0),
        (FWD_X, "cast_error", 0.125), (HEAD_W, "saturated", 0.0625), (HEAD_W, "flushed", 0.0),
        (HEAD_W, "cast_error", 0.0625), (DGRAD_G, "saturated", 0.0), (DGRAD_G, "flushed", 0.5),
        (DGRAD_G, "cast_error", 0.25),
        ("model", "grad_cosine", [0.875, 0.75, 0.625, 0.5][2 * seed + late]),
        ("blocks.0.attn", "attn_logit_max", 5.0 if late else 3.0), ("blocks.1.attn", "attn_logit_max", 2.0 if late else 4.0),
        ("model", "log_z", 6.0 if late else 5.5),
        ("blocks.0.attn.c_attn.weight", "update_ratio", 0.01), ("blocks.0.attn.c_attn.bias", "update_ratio", 0.5),
    ]


@pytest.fixture
def report(tmp_path):
    store = ResultsStore(tmp_path / "store.db")
    for fmt in (None, "e8m3"):
        for seed in (0, 1):
            precision = {"name": "fp32", "format": "fp32"} if fmt is None else {"name": "mask", "format": fmt,
                                                                              "x": fmt, "w": fmt, "grad": fmt}
            cfg = {"model": {"n_layer": 2}, "precision": precision, "optim": {"lr": 1e-3}, "seed": seed}
            rid = run_id(cfg)
            assert store.claim_run(rid, cfg, "diag")
            with store.recorder(rid) as rec:
                for step in (5, 10):
                    rec.log(step, "train", {"loss": 5.0 - step / 10})
                    rec.diagnostics(step, _rows(fmt, seed, step))
                rec.log(10, "val", {"loss": 4.0})
                rec.finish({"status": "completed"})
    return build(store, "diag")


def test_site_means_worst_sites_and_steps(report):
    d = report.diagnostics
    assert set(d.variant) == {"fp32", "e8m3"} and len(d) == 2 * 2 + 2 * 2 * 15
    means = site_means(d, "e8m3")
    assert list(zip(means.layer, means.operand)) == [("blocks.0.attn.c_attn", "fwd_x"), ("blocks.0.attn.c_attn", "dgrad_g"),
                                                     ("lm_head", "fwd_w")]  # model order, then operand order
    assert list(means.saturated) == [0.375, 0.0, 0.0625] and list(means.flushed) == [0.0, 0.5, 0.0]
    assert worst_sites(d, "e8m3") == ("saturated", [FWD_X, HEAD_W, DGRAD_G])
    assert by_step(d, "e8m3", "saturated", FWD_X).to_dict() == {5: 0.25, 10: 0.5}
    assert by_step(d, "e8m3", "attn_logit_max").to_dict() == {5: 4.0, 10: 5.0}  # max over the layers
    assert site_means(d, "fp32").empty and worst_sites(d, "fp32") == ("saturated", [])


def test_summary_per_format(report):
    table = summary(report.diagnostics, list(report.by_variant.variant)).set_index("variant")
    e8m3 = table.loc["e8m3"]
    assert (e8m3.saturated, e8m3.saturated_site) == (0.375, FWD_X)
    assert (e8m3.flushed, e8m3.flushed_site) == (0.5, DGRAD_G)
    assert (e8m3.cast_error, e8m3.cast_error_site) == (0.25, DGRAD_G)
    assert (e8m3.grad_cosine, e8m3.attn_logit_max, e8m3.log_z, e8m3.update_ratio) == (0.625, 5.0, 6.0, 0.01)
    assert table.loc["fp32"].grad_cosine == 1.0 and pd.isna(table.loc["fp32"].saturated)
    shown = render.diagnostics_display(report)
    assert list(shown.format) == ["fp32", "e8m3"]
    assert shown["most saturated"].tolist() == ["–", f"37.50% ({FWD_X})"]
    assert shown["min grad cosine"].tolist() == ["1.0000", "0.6250"]


def test_report_files_show_the_section(report, tmp_path):
    written = {p.name: p for p in render.write(report, tmp_path / "out")}
    assert {"diagnostics.csv", "diagnostics_trends.png", "diagnostics_sites_2.png"} <= set(written)
    assert "diagnostics_sites_1.png" not in written  # fp32 casts nothing
    html = written["report.html"].read_text()
    section = html[html.index("<h2>Numerical diagnostics</h2>"):html.index("<h2>Definitions</h2>")]
    assert FWD_X in section and "0.6250" in section
    for name in ("diagnostics_trends.png", "diagnostics_sites_2.png"):  # embedded, byte for byte
        encoded = base64.b64encode(written[name].read_bytes()).decode("ascii")
        assert f'alt="{name}" src="data:image/png;base64,{encoded}"' in section
    assert "## Numerical diagnostics" in written["report.md"].read_text()
    sites = pd.read_csv(io.StringIO(written["diagnostics.csv"].read_text()))
    assert sites.columns.tolist() == ["format", "layer", "operand", "saturated", "flushed", "cast_error"]
    assert sites.saturated.tolist() == [0.375, 0.0, 0.0625] and set(sites.format) == {"e8m3"}


def test_a_sweep_without_diagnostics_has_no_section(tmp_path):
    store = ResultsStore(tmp_path / "store.db")
    cfg = {"model": {"n_layer": 2}, "precision": {"name": "fp32", "format": "fp32"}, "optim": {"lr": 1e-3}, "seed": 0}
    assert store.claim_run(run_id(cfg), cfg, "plain")
    with store.recorder(run_id(cfg)) as rec:
        rec.log(1, "train", {"loss": 5.0})
        rec.finish({"status": "completed"})
    report = build(store, "plain")
    names = [p.name for p in render.write(report, tmp_path / "out")]
    assert render.diagnostics_display(report) is None and not any(n.startswith("diagnostics") for n in names)
    assert "Numerical diagnostics" not in (tmp_path / "out" / "report.html").read_text()
