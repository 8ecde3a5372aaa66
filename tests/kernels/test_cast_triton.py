"""The Triton kernel: bit-identical to the torch twin (interpreter), and it compiles for sm_80/sm_90."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.interpreter import InterpretedFunction

from helpers.ptx import ptxas_report

import precisionlab.kernels.cast_triton as cast_triton
from precisionlab import FloatFormat, quantize
from precisionlab.numerics.cast import cast_spec

MODES = ["nearest_even", "nearest_away", "toward_zero", "stochastic"]


FORMATS = ["e4m3fn", "e5m2", "e8m3", "e2m1fn", "e4m3fnuz", "e8m0", "e3m2fn"]
TESTS_DIR = Path(__file__).parents[1]


@pytest.mark.slow
def test_interpreted_kernel_is_bit_identical_to_torch():
    """Every rounding mode (stochastic included), saturation and FTZ, on every bf16 pattern + probes;
    and the torch Philox twin against tl.randint itself."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(TESTS_DIR)}
    proc = subprocess.run(
        [sys.executable, str(TESTS_DIR / "helpers" / "interpreted_kernel_check.py"), *FORMATS],
        env=env, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.count("bit-identical") == len(FORMATS)
    assert "torch twin reproduces tl.randint" in proc.stdout


def test_interpreted_kernel_keeps_shape_and_odd_sizes(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(cast_triton, "cast_kernel", InterpretedFunction(cast_triton.cast_kernel.fn))
    monkeypatch.setattr(cast_triton, "round_bits", InterpretedFunction(cast_triton.round_bits.fn))  # its helper
    for shape in [(1,), (1023,), (1025,), (3, 7, 11), (0,)]:
        x = torch.randn(shape)
        q = quantize(x, "e4m3fn", backend="triton")
        assert q.shape == x.shape
        assert torch.equal(q, quantize(x, "e4m3fn", backend="torch"))


# -- ahead-of-time compilation for real GPUs ------------------------------------

SIGNATURE = {"x_ptr": "*fp32", "y_ptr": "*fp32", "n_elements": "i32", "seed": "i64", "offset": "i32"}


def compile_for(name: str, rounding: str, arch: int):
    spec = cast_spec(FloatFormat.parse(name), rounding, True, True)
    constexprs = cast_triton.kernel_constexprs(spec)
    signature = {**SIGNATURE, **{k: "constexpr" for k in constexprs}}
    source = ASTSource(fn=cast_triton.cast_kernel, signature=signature, constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32))


@pytest.mark.slow
@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("name", ["e4m3fn", "e5m2", "e8m3"])
def test_kernel_compiles_for_gpu_without_spills(name, arch, tmp_path):
    for rounding in MODES:
        compiled = compile_for(name, rounding, arch)
        assert len(compiled.asm["cubin"]) > 0
        ptx = compiled.asm["ptx"]
        assert f".target sm_{arch}" in ptx
        # subnormal results come from an exact fp32 multiply: it must not flush
        assert not re.search(r"\bmul\.[a-z.]*ftz", ptx), "fp32 multiply flushes subnormals"
        assert ptxas_report(ptx, arch, tmp_path)[1:] == (0, 0), (name, rounding, arch)
