"""The error of a config value the user must fix. It lives with the training stage that raises it
(a branch without its parent's checkpoint, an unreadable checkpoint to resume); precisionlab.config,
which checks everything else before a run starts, raises the same class."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A config value the user must fix; the message names the key and what is accepted."""
