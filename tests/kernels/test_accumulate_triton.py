"""The accumulation kernel: bit-identical to the blocked torch path (interpreter), and it compiles
for sm_80/sm_90 without spills (and for sm_100)."""

from __future__ import annotations

import re

import pytest
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.interpreter import InterpretedFunction

import precisionlab.kernels.accumulate_triton as accumulate_triton
from precisionlab.numerics.accumulate import Accumulate, accumulate_matmul, parse_accumulator
from helpers.ptx import ptxas_report

CASES = [("e8m13", 1, 0, "nearest_even"), ("e8m13", 5, 10, "toward_zero"), ("bf16", 3, 0, "nearest_away"),
         ("fp16", 1, 7, "nearest_even"), ("fp16", 64, 0, "toward_zero"), ("e5m4", 2, 0, "nearest_even")]


@pytest.fixture
def interpreted(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    for name in ("accumulate_kernel", "round_f64"):
        monkeypatch.setattr(accumulate_triton, name, InterpretedFunction(getattr(accumulate_triton, name).fn))


@pytest.mark.parametrize("fmt,k,promote,rounding", CASES)
def test_interpreted_kernel_is_bit_identical_to_the_torch_path(interpreted, fmt, k, promote, rounding):
    g = torch.Generator().manual_seed(k)
    # FP8-valued operands (exact float64 chunk sums), partial tiles on both axes, K not a multiple of k;
    # a spread of magnitudes so e5m4 and fp16 overflow to Inf and small sums go subnormal
    a = torch.randn(37, 41, generator=g).to(torch.float8_e4m3fn).float() * 2.0 ** torch.arange(-18, 19).view(37, 1)
    b = torch.randn(41, 45, generator=g).to(torch.float8_e4m3fn).float()
    acc = Accumulate(parse_accumulator(fmt), k, promote, rounding)
    ours = accumulate_matmul(a, b, acc, backend="triton")
    if fmt in ("fp16", "e5m4"):
        overflow = ours.abs() == acc.fmt.max_finite if rounding == "toward_zero" else ours.isinf()
        assert overflow.any() and ((ours.abs() < acc.fmt.min_normal) & (ours != 0)).any()
    twin = accumulate_matmul(a, b, acc, backend="torch")
    assert torch.equal(ours.view(torch.int32), twin.view(torch.int32)), (ours - twin).abs().max()
    strided = accumulate_matmul(a.t().contiguous().t(), b, acc, backend="triton")
    assert torch.equal(strided.view(torch.int32), ours.view(torch.int32))


def test_triton_backend_needs_cuda_or_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="CUDA"):
        accumulate_matmul(torch.ones(2, 3), torch.ones(3, 2), Accumulate(parse_accumulator("bf16")), backend="triton")


SIGNATURE = {"a_ptr": "*fp32", "b_ptr": "*fp32", "c_ptr": "*fp32",
             **{k: "i32" for k in ("M", "N", "K", "stride_am", "stride_ak", "stride_bk", "stride_bn", "stride_cm", "stride_cn")}}


@pytest.mark.slow
@pytest.mark.parametrize("arch", [80, 90, 100])
def test_kernel_compiles_for_gpu_without_spills(arch, tmp_path):
    for fmt, k, promote, rounding in [("e8m13", 1, 0, "nearest_even"), ("e8m13", 32, 128, "toward_zero"),
                                      ("fp16", 4, 0, "nearest_away")]:
        constexprs = accumulate_triton.kernel_constexprs(Accumulate(parse_accumulator(fmt), k, promote, rounding))
        source = ASTSource(fn=accumulate_triton.accumulate_kernel,
                           signature={**SIGNATURE, **{name: "constexpr" for name in constexprs}}, constexprs=constexprs)
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32))
        assert len(compiled.asm["cubin"]) > 0
        ptx = compiled.asm["ptx"]
        assert f".target sm_{arch}" in ptx and "f64" in ptx
        assert not re.search(r"\b(add|mul|fma)\.[a-z.]*ftz", ptx), "an fp32 operation flushes subnormals"
        assert ptxas_report(ptx, arch, tmp_path)[1:] == (0, 0), (fmt, k, arch)
