"""Recorders (precisionlab.train.recorder): `Tee` hands every call to each recorder, optional hooks only
to those that have them."""

from __future__ import annotations

from precisionlab.train.recorder import Tee


def test_tee_hands_every_call_on_and_skips_missing_optional_hooks():
    class Plain:
        def __init__(self):
            self.calls = []

        def start(self, meta):
            self.calls.append(("start", meta))

        def log(self, step, split, metrics):
            self.calls.append(("log", step, split, metrics))

        def checkpoint(self, step, path):
            self.calls.append(("checkpoint", step, path))

        def finish(self, outcome):
            self.calls.append(("finish", outcome))

    class WithSharpness(Plain):
        def sharpness(self, step, metric, value, params):
            self.calls.append(("sharpness", step, metric, value, params))

        def diagnostics(self, step, rows):
            self.calls.append(("diagnostics", step, rows))

    plain, sharp = Plain(), WithSharpness()
    tee = Tee(plain, None, sharp, extra_meta={"run_dir": "/x"})
    tee.start({"a": 1})
    tee.log(1, "train", {"loss": 2.0})
    tee.checkpoint(1, "c.pt")
    tee.sharpness(1, "logit", 0.5, {"eps": 1e-3})
    tee.diagnostics(1, [("model", "grad_cosine", 1.0)])  # optional too
    tee.finish({"status": "completed"})
    common = [("start", {"a": 1, "run_dir": "/x"}), ("log", 1, "train", {"loss": 2.0}), ("checkpoint", 1, "c.pt")]
    assert plain.calls == [*common, ("finish", {"status": "completed"})]
    assert sharp.calls == [*common, ("sharpness", 1, "logit", 0.5, {"eps": 1e-3}),
                           ("diagnostics", 1, [("model", "grad_cosine", 1.0)]), ("finish", {"status": "completed"})]
