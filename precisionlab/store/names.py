"""Sweep names: what the store accepts as a sweep's name, so a name can also be a folder name.

`precisionlab report` writes a sweep's report into `reports/NAME/`, so a name is a path
component: one of letters, digits, `.`, `_`, `-`, starting with a letter or digit, at
most `MAX_LENGTH` characters, and never containing `..`. Nothing else is ever accepted
by `precisionlab sweep`; a store written by other means may hold other names, which
`report` then refuses to use as a folder name (see `precisionlab.analysis.render`).
"""

from __future__ import annotations

import re

__all__ = ["MAX_LENGTH", "SWEEP_NAME_HELP", "sweep_name_problem"]

MAX_LENGTH = 100
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*", re.ASCII)
SWEEP_NAME_HELP = (f"accepted: letters, digits, '.', '_' and '-', starting with a letter or digit, "
                   f"at most {MAX_LENGTH} characters, no '..' (e.g. bits-e8m3)")


def sweep_name_problem(name: object) -> str | None:
    """None if `name` is a usable sweep name, else what is wrong with it (one line, with the alphabet)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name or len(name) > MAX_LENGTH:
        shown = repr(name) if not isinstance(name, str) or len(name) <= 60 else repr(name[:60]) + "..."
        return f"sweep name {shown} is not usable as a folder name; {SWEEP_NAME_HELP}"
    return None
