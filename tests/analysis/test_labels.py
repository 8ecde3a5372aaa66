"""Run labels and the reference loss ℓ₀ (precisionlab.analysis.labels)."""

from __future__ import annotations

import math

import pandas as pd

from precisionlab.analysis.labels import label_runs


def _runs(*rows) -> pd.DataFrame:
    """Store-like runs: (status, initial_loss, final_val_loss, vocab_size or None)."""
    return pd.DataFrame([{
        "run_id": f"r{i}", "status": status, "initial_loss": initial, "final_val_loss": final, "lr": 1e-3, "seed": i,
        "format_x": "e8m3", "format_w": "e8m3", "format_grad": "e8m3",
        "config": {"model": {"vocab_size": vocab}} if vocab else {"model": {}},
    } for i, (status, initial, final, vocab) in enumerate(rows)])


def test_the_reference_loss_is_ln_v_never_one_batch():
    """ℓ₀ = ln V whatever the step-1 batch gave: a final loss above it is capped at it, and a diverged
    run counts as it (the value written out: ln 256 = 8 ln 2)."""
    runs = label_runs(_runs(("completed", 5.1, 2.2, 256), ("completed", 5.4, 5.9, 256), ("diverged", 5.3, 9.0, 256),
                            ("completed", 10.9, 3.0, 50304)))
    ln_256 = 8 * math.log(2)
    assert runs.loss0.tolist()[:3] == [ln_256] * 3 and runs.loss0.iat[3] == math.log(50304)
    assert runs.capped_loss.tolist() == [2.2, ln_256, ln_256, 3.0]


def test_runs_whose_config_lacks_the_vocabulary_fall_back_to_their_initial_loss():
    runs = label_runs(_runs(("completed", 5.25, 6.0, None), ("failed", 5.0, None, None)))
    assert runs.loss0.tolist() == [5.25, 5.0]
    assert runs.capped_loss.iat[0] == 5.25 and math.isnan(runs.capped_loss.iat[1])  # unfinished: no ℓ


def test_identical_to_needs_every_run_to_match_the_reference_bit_for_bit():
    from precisionlab.analysis.labels import identical_to

    rows = []
    for variant, shift in (("e8m7", 0.0), ("e7m7", 0.0), ("e8m3", 1e-12)):
        for lr in (1e-3, 1e-2):
            for seed in (0, 1):
                loss = 2.0 + lr + 0.01 * seed
                rows.append({"variant": variant, "lr": lr, "seed": seed, "status": "completed", "initial_loss": 5.5,
                             "final_train_loss": loss + shift, "final_val_loss": loss + shift, "min_val_loss": loss + shift})
    runs = pd.DataFrame(rows)
    assert identical_to(runs, "e7m7", "e8m7")
    assert not identical_to(runs, "e8m3", "e8m7")  # one ulp apart is not identical
    assert not identical_to(runs[~((runs.variant == "e8m7") & (runs.seed == 1))], "e7m7", "e8m7")  # a reference cell missing
    diverged = runs.copy()
    diverged.loc[(diverged.variant == "e7m7") & (diverged.seed == 0), "status"] = "diverged"
    assert not identical_to(diverged, "e7m7", "e8m7")
