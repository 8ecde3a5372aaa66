"""Model factories for `precisionlab.track(..., model_factory=...)` tests: importable as
"helpers.factories:NAME" wherever the tests' folder is on the path (pytest, and `precisionlab
sharpness` called in the test's process)."""

from __future__ import annotations

from precisionlab.train.model import LM, ModelConfig


def tiny_lm(config: dict) -> LM:
    """precisionlab's own LM (one layer, width 32), unconverted, sized by the tracked config."""
    return LM(ModelConfig(vocab_size=config["model"]["vocab_size"], block_size=config["train"]["seq_len"],
                          n_layer=1, n_head=2, n_embd=32))


NOT_A_FUNCTION = 3
