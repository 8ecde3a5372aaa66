"""The run-directory recorder (precisionlab.train.rundir): metrics.csv and run.json as a run reports
them, read back with the csv and json modules; a resumed run keeps its earlier rows up to its start."""

from __future__ import annotations

import csv
import json

from precisionlab.train.rundir import RunDirRecorder, write_atomic


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_run_writes_its_rows_checkpoints_and_outcome(tmp_path):
    rec = RunDirRecorder(tmp_path / "run")
    rec.start({"run_id": "abc", "seed": 3})
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "running"
    rec.log(1, "train", {"loss": 2.5, "lr": 1e-3})
    assert not (tmp_path / "run" / "metrics.csv").exists()  # train rows are buffered until an eval
    rec.log(2, "train", {"loss": 2.0, "lr": 2e-3})
    rec.log(2, "val", {"loss": 2.25})
    assert [r["step"] for r in _csv(tmp_path / "run" / "metrics.csv")] == ["1", "2", "2"]
    rec.checkpoint(2, "/ckpt/step_2.pt")
    rec.diagnostics(2, [("model", "grad_norm", 0.5)])
    rec.log(3, "train", {"loss": 1.5, "lr": 3e-3})
    rec.finish({"status": "completed", "steps_done": 3})
    rows = _csv(tmp_path / "run" / "metrics.csv")
    assert [(r["step"], r["split"], r["loss"]) for r in rows] == [("1", "train", "2.5"), ("2", "train", "2.0"),
                                                                  ("2", "val", "2.25"), ("3", "train", "1.5")]
    assert rows[2]["lr"] == ""  # a val row has no lr
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta == {"run_id": "abc", "seed": 3, "status": "completed", "steps_done": 3,
                    "checkpoints": [{"step": 2, "path": "/ckpt/step_2.pt"}]}
    assert _csv(tmp_path / "run" / "diagnostics.csv") == [{"step": "2", "site": "model", "name": "grad_norm", "value": "0.5"}]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["diagnostics.csv", "metrics.csv", "run.json"]


def test_sharpness_rows_carry_their_parameters_as_json(tmp_path):
    rec = RunDirRecorder(tmp_path)
    rec.start({})
    rec.sharpness(4, "logit", 0.75, {"eps": 1e-3, "batches": 2})
    (row,) = _csv(tmp_path / "sharpness.csv")
    assert (row["step"], row["metric"], float(row["value"])) == ("4", "logit", 0.75)
    assert json.loads(row["params"]) == {"eps": 1e-3, "batches": 2}


def test_a_resumed_run_keeps_the_rows_up_to_its_start_step(tmp_path):
    first = RunDirRecorder(tmp_path)
    first.start({})
    for step in range(1, 6):
        first.log(step, "train", {"loss": 10.0 - step})
    first.log(5, "val", {"loss": 4.5})  # flushes steps 1..5; the attempt then dies
    again = RunDirRecorder(tmp_path)
    again.start({"start_step": 3})
    again.log(4, "train", {"loss": 0.5})
    again.finish({"status": "completed"})
    rows = _csv(tmp_path / "metrics.csv")
    assert [(r["step"], r["loss"]) for r in rows] == [("1", "9.0"), ("2", "8.0"), ("3", "7.0"), ("4", "0.5")]


def test_write_atomic_replaces_the_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "deep" / "file.txt"
    write_atomic(target, "a long first version\n")
    write_atomic(target, "short\n")
    assert target.read_text() == "short\n" and [p.name for p in target.parent.iterdir()] == ["file.txt"]
