"""torch.compile'd casts (precisionlab.kernels.compiled): where the compiler fails, a large cast warns
once and runs the eager twin, with the same bits. (The compiled graphs against the eager twin, bit
for bit: tests/numerics/test_cast.py.)"""

from __future__ import annotations

import pytest
import torch

from helpers.oracles import assert_same_bits, random_fp32
from precisionlab import quantize


def test_a_failing_compiler_falls_back_to_the_eager_twin(monkeypatch):
    """Where torch.compile fails (no C++ compiler, ...), large casts warn once and run eager: same bits."""
    import precisionlab.kernels.compiled as compiled
    import precisionlab.numerics.cast as cast
    from precisionlab.numerics.cast import quantize_scaled

    def broken(fn, **kw):
        def call(*args):
            raise RuntimeError("no compiler here")
        return call

    monkeypatch.setattr(compiled, "_graphs", {})
    monkeypatch.setattr(cast, "_flat", {})
    monkeypatch.setattr(compiled.torch, "compile", broken)
    x = torch.from_numpy(random_fp32(1 << 15, seed=4))
    monkeypatch.setenv("PRECISIONLAB_COMPILE", "1")
    with pytest.warns(UserWarning, match="torch.compile unavailable"):
        got = quantize(x, "e4m3fn")
    with pytest.warns(UserWarning, match="torch.compile unavailable"):
        got_scaled = quantize_scaled(x, "e5m2")
    monkeypatch.setenv("PRECISIONLAB_COMPILE", "0")
    assert_same_bits(got.numpy(), quantize(x, "e4m3fn").numpy(), x.numpy(), "fallback e4m3fn")
    assert_same_bits(got_scaled.numpy(), quantize_scaled(x, "e5m2").numpy(), x.numpy(), "fallback scaled e5m2")
