"""Sweep names (precisionlab.store.names): the alphabet that keeps a stored name usable as a folder name.
"""

from __future__ import annotations

import pytest

from precisionlab.store.names import sweep_name_problem


@pytest.mark.parametrize("name, ok", [
    ("default", True), ("default-3fa2c1", True), ("paper_rne.v2", True), ("A1", True),
    ("../../../escaped", False), ("/abs", False), ("a/b", False), ("a\\b", False), ("..", False), ("a..b", False),
    (".hidden", False), ("-x", False), ("", False), ("x" * 101, False), ("é", False), ("a\nb", False), ("a b", False),
])
def test_sweep_name_alphabet(name, ok):
    assert (sweep_name_problem(name) is None) == ok
