"""The Triton block-cast kernel: bit-identical to the torch twin (interpreter), and it compiles
ahead of time for sm_80, sm_90 and sm_100 without register spills or flushing multiplies."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from helpers.ptx import ptxas_report

import precisionlab.kernels.block_triton as block_triton
from precisionlab.numerics.blocks import parse_format
from precisionlab.numerics.cast import block_spec

TESTS_DIR = Path(__file__).parents[1]


@pytest.mark.slow
def test_interpreted_block_kernel_is_bit_identical_to_twin():
    """MX (e4m3, e5m2, both fp6, fp4; floor and rceil), NVFP4 1x16 and 16x16, 2-D MX, rule amax with
    fp32/bf16/e4m3fn/e5m2 scales, chunked 1-D and 2-D blocks; every rounding mode, saturate/FTZ
    variants; partial, NaN, Inf, zero, subnormal and boundary blocks; tensor-scale corners; axis != -1."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PRECISIONLAB_COMPILE": "0", "PYTHONPATH": str(TESTS_DIR)}
    proc = subprocess.run(
        [sys.executable, str(TESTS_DIR / "helpers" / "interpreted_block_check.py")],
        env=env, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert re.search(r"block kernel: \d+ cases bit-identical", proc.stdout), proc.stdout


@pytest.mark.parametrize(
    "name, K, expected",
    [
        ("mxfp8", 4096, dict(B=32, C=1, CB=64, NB=64, CHUNK=32, NCHUNK=1)),  # 64 blocks along one row
        ("mxfp8", 40, dict(B=32, C=1, CB=2, NB=64, CHUNK=32, NCHUNK=1)),  # 2 blocks per row x 32 rows
        ("nvfp4", 100, dict(B=16, C=1, CB=8, NB=128, CHUNK=16, NCHUNK=1)),
        ("e2m1fn/b16x16/e4m3fn/tensor", 4096, dict(B=16, C=16, CB=8, NB=8, CHUNK=256, NCHUNK=1)),
        ("e4m3fn/b2048/e8m0", 4096, dict(B=2048, C=1, CB=1, NB=1, CHUNK=2048, NCHUNK=1)),
        ("e4m3fn/b4096/e8m0", 100, dict(B=4096, C=1, CB=1, NB=1, CHUNK=1024, NCHUNK=4)),  # chunked
        ("e4m3fn/b256x256/e8m0", 100, dict(B=256, C=256, CB=1, NB=1, CHUNK=1024, NCHUNK=64)),
    ],
)
def test_tile_config(name, K, expected):
    spec = block_spec(parse_format(name), "nearest_even", True, True)
    assert block_triton.tile_config(spec, K) == expected


# -- ahead-of-time compilation for real GPUs ------------------------------------

SIGNATURE = {"x_ptr": "*fp32", "y_ptr": "*fp32", "amax_ptr": "*i32", "rows": "i32", "K": "i32",
             "n_col_tiles": "i32", "seed": "i64"}
ARCHS = [80, 90, 100]  # A100, H100, B200
# one specialisation of each code path: E8M0 floor/rceil, float scale, two-level (and its amax pass),
# 2-D blocks, chunked blocks
AOT_FORMATS = ["mxfp8", "mxfp4", "e4m3fn/b32/e8m0/rceil", "e4m3fn/b128/fp32", "nvfp4",
               "e2m1fn/b16x16/e4m3fn/tensor", "e4m3fn/b8192/e8m0", "e2m1fn/b64x64/e4m3fn/tensor"]


def compile_block(name: str, rounding: str, arch: int, amax_pass: bool = False, K: int = 4096):
    spec = block_spec(parse_format(name), rounding, True, True)
    constexprs = {**block_triton.block_kernel_constexprs(spec), **block_triton.tile_config(spec, K),
                  "AMAX_PASS": amax_pass}
    signature = {**SIGNATURE, **{k: "constexpr" for k in constexprs}}
    source = ASTSource(fn=block_triton.block_cast_kernel, signature=signature, constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=block_triton.NUM_WARPS))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", AOT_FORMATS)
def test_block_kernel_compiles_for_gpu_without_spills(name, arch, tmp_path):
    variants = [(r, False) for r in ("nearest_even", "nearest_away", "toward_zero", "stochastic")]
    if parse_format(name).tensor_scale:
        variants.append(("nearest_even", True))  # the amax pass
    for rounding, amax_pass in variants:
        compiled = compile_block(name, rounding, arch, amax_pass)
        assert len(compiled.asm["cubin"]) > 0
        ptx = compiled.asm["ptx"]
        assert re.search(rf"^\.target\s+sm_{arch}a?\b", ptx, re.M)
        # scaled values and decoded results can be subnormal: nothing may flush them
        assert not re.search(r"\b(mul|div|fma|min|max)\.[a-z0-9.]*ftz", ptx), "an fp32 op flushes subnormals"
        # every fp32 division is IEEE round-to-nearest (Triton's `/` would be div.full, not correctly rounded)
        assert set(re.findall(r"\bdiv\.[a-z0-9.]*f32", ptx)) <= {"div.rn.f32"}
        assert not re.search(r"\bfma\.[a-z0-9.]*f32", ptx), "a contracted multiply-add changes the rounding"
        regs, stores, loads = ptxas_report(ptx, arch, tmp_path)
        assert (stores, loads) == (0, 0), (name, rounding, amax_pass, arch, regs)
