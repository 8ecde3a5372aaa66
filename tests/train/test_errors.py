"""ConfigError: the one error class of a config value the user must fix, raised by the training
stage and by precisionlab.config alike (the CLI turns it into one line and exit 2)."""

from __future__ import annotations

import pytest

import precisionlab.config
from precisionlab.train.errors import ConfigError


def test_config_error_is_a_value_error_and_the_class_config_exports():
    assert issubclass(ConfigError, ValueError)
    assert precisionlab.config.ConfigError is ConfigError
    with pytest.raises(ValueError, match="train.resume"):
        raise ConfigError("train.resume: no checkpoint there")
