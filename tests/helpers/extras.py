"""Optional packages a test needs (the `hf`, `tensorboard`, `mlflow` and `wandb` extras).

`require("transformers")` imports and returns the module, or skips the test naming the extra to install;
where PRECISIONLAB_REQUIRE_EXTRAS=1 (CI installs the extras it tests, and sets it) a missing package fails
the test instead, so a broken install cannot pass as a row of skips."""

from __future__ import annotations

import importlib
import os

import pytest

__all__ = ["EXTRA_OF", "require"]

# package -> the precisionlab extra that installs it
EXTRA_OF = {"transformers": "hf", "tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def require(name: str):
    """The imported module `name` (dotted names allowed), or a skip (a failure under PRECISIONLAB_REQUIRE_EXTRAS=1)."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        extra = EXTRA_OF.get(name.split(".")[0], name.split(".")[0])
        message = f"{name} is not installed ({err}); pip install -e \".[{extra}]\""
        if os.environ.get("PRECISIONLAB_REQUIRE_EXTRAS") == "1":
            pytest.fail(f"required extra missing: {message}")
        pytest.skip(message)
