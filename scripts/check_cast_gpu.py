"""On a CUDA machine: the Triton cast kernels against the CPU torch twins and ml_dtypes, and their speed.

    python scripts/check_cast_gpu.py [--numel 268435456]

1. Bit-exactness: for every named format, rounding mode (stochastic included),
   saturation and flush-to-zero, the kernel's output on the GPU equals the torch
   twin's on the CPU bit for bit (inputs: every bf16 pattern + 4M random fp32 bit
   patterns, so every exponent, Inf and NaN), and saturate=False nearest-even
   equals ml_dtypes.
2. Block formats: for MX (floor and rceil), NVFP4 (1x16 and 16x16), rule amax
   with fp32/bf16 scales and a chunked block (> 2048 elements), every rounding
   mode, saturation and flush-to-zero, the block kernel's output on the GPU
   equals the torch twin's on the CPU bit for bit (NaN as NaN) on a (rows, K)
   matrix with partial blocks along both axes: random fp32 bit patterns (NaN/Inf
   blocks), finite patterns, and randn blocks scaled across the exponent range.
3. Accumulation: the limited-precision GEMM kernel (precisionlab/kernels/accumulate_triton.py) on the GPU
   equals the blocked torch path on the CPU bit for bit, on FP8-valued operands (exact chunk
   sums) with partial tiles, for e8m13/bf16/fp16 accumulators, k = 1, 32, K and promotion; and
   its time on a 1024 x 512 x 1024 GEMM against torch's fp32 matmul.
4. Throughput on a large randn tensor: the kernels vs `clone` (the memory floor)
   and vs torch's native `x.to(float8_e4m3fn).float()`, timed with
   triton.testing.do_bench in one run; printed as ratios.
Exits 1 on the first mismatch.
"""

from __future__ import annotations

import argparse
import sys

import ml_dtypes
import numpy as np
import torch
from triton.testing import do_bench

from precisionlab import quantize
from precisionlab.numerics.accumulate import Accumulator, accumulate_matmul, parse_accumulator

ML = {"e4m3fn": ml_dtypes.float8_e4m3fn, "e5m2": ml_dtypes.float8_e5m2, "e4m3fnuz": ml_dtypes.float8_e4m3fnuz,
      "e5m2fnuz": ml_dtypes.float8_e5m2fnuz, "e3m4": ml_dtypes.float8_e3m4, "e4m3": ml_dtypes.float8_e4m3,
      "e2m1fn": ml_dtypes.float4_e2m1fn, "e2m3fn": ml_dtypes.float6_e2m3fn, "e3m2fn": ml_dtypes.float6_e3m2fn}
OTHER = ["bf16", "fp16", "e8m3", "e8m5", "e7m7", "e8m0", "e5m3fnuz"]
MODES = ["nearest_even", "nearest_away", "toward_zero", "stochastic"]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(((bits(a) == bits(b)) | (a.isnan() & b.isnan())).all())


def twin_agrees(x_gpu: torch.Tensor, x_cpu: torch.Tensor, name: str, what: str, **kw) -> None:
    """The Triton kernel on the GPU and the torch twin on the CPU cast `name` bit-identically, or exit 1."""
    gpu = quantize(x_gpu, name, backend="triton", **kw).cpu()
    cpu = quantize(x_cpu, name, backend="torch", **kw)
    if not same(gpu, cpu):
        print(f"MISMATCH {what} vs torch twin: {name} {kw}")
        sys.exit(1)


def check_bits() -> int:
    rng = np.random.default_rng(0)
    x = np.concatenate([(np.arange(2**16, dtype=np.uint32) << 16).view(np.float32),
                        rng.integers(0, 2**32, 4 << 20, dtype=np.uint32).view(np.float32)])
    x_cpu = torch.from_numpy(x)
    x_gpu = x_cpu.cuda()
    cases = 0
    for name in [*ML, *OTHER]:
        for rounding in MODES:
            for saturate in (True, False):
                for subnormals in (True, False):
                    twin_agrees(x_gpu, x_cpu, name, "kernel", rounding=rounding, saturate=saturate,
                                subnormals=subnormals, seed=2024)
                    cases += 1
        if name in ML:
            keep = ~np.isnan(x) if not np.isnan(np.arange(256, dtype=np.uint8).view(ML[name]).astype(np.float32)).any() else np.ones(x.shape, bool)
            ref = torch.from_numpy(x[keep].astype(ML[name]).astype(np.float32))
            gpu = quantize(x_gpu, name, saturate=False).cpu()[torch.from_numpy(keep)]
            if not same(gpu, ref):
                print(f"MISMATCH kernel vs ml_dtypes: {name}")
                sys.exit(1)
            cases += 1
    return cases


BLOCK_FORMATS = ["mxfp8", "mxfp8_e5m2", "mxfp6", "mxfp6_e3m2", "mxfp4", "nvfp4", "e4m3fn/b32/e8m0/rceil",
                 "e2m1fn/b32/e8m0/rceil", "e2m1fn/b16x16/e4m3fn/tensor", "e4m3fn/b16x16/e8m0", "e4m3fn/b128/fp32",
                 "e2m1fn/b32/bf16", "e2m1fn/b16/e4m3fn", "e4m3fn/b8192/e8m0", "e2m1fn/b64x64/e4m3fn/tensor"]


def block_input(rows: int = 600, K: int = 4096 + 17) -> torch.Tensor:
    """(rows, K) fp32 with partial blocks along both axes: random bit patterns in the first third
    (NaN/Inf blocks), finite random bit patterns in the second, randn blocks scaled over the whole
    exponent range in the last (its first rows start with all-zero blocks)."""
    g = torch.Generator().manual_seed(1)
    a, b = rows // 3, 2 * (rows // 3)
    x = torch.randint(-(2**31), 2**31, (rows, K), generator=g, dtype=torch.int64).to(torch.int32)
    finite = x[a:b]
    x[a:b] = torch.where((finite & 0x7F800000) == 0x7F800000, finite & ~0x40000000, finite)
    x = x.view(torch.float32)
    scale = torch.exp2(torch.randint(-150, 125, (rows - b, -(-K // 32)), generator=g).float())
    x[b:] = torch.randn(rows - b, K, generator=g) * scale.repeat_interleave(32, 1)[:, :K]
    x[b : b + 8, :64] = 0.0  # all-zero blocks
    return x


def check_block_bits() -> int:
    x_cpu = block_input()
    x_gpu = x_cpu.cuda()
    cases = 0
    for name in BLOCK_FORMATS:
        for rounding in MODES:
            for saturate, subnormals in [(True, True), (False, True), (True, False)]:
                twin_agrees(x_gpu, x_cpu, name, "block kernel", rounding=rounding, saturate=saturate,
                            subnormals=subnormals, seed=2024)
                cases += 1
        for axis in (0,):  # blocks along the other axis: quantize transposes into the (rows, K) view
            if not same(quantize(x_gpu, name, axis=axis).cpu(), quantize(x_cpu, name, axis=axis, backend="torch")):
                print(f"MISMATCH block kernel vs torch twin: {name} axis={axis}")
                sys.exit(1)
            cases += 1
    return cases


def check_accumulate_bits() -> int:
    g = torch.Generator().manual_seed(7)
    a = (torch.randn(300, 1000, generator=g) * 8).to(torch.float8_e4m3fn).float()
    b = torch.randn(1000, 70, generator=g).to(torch.float8_e4m3fn).float()
    cases = 0
    for fmt in ("e8m13", "bf16", "fp16"):
        for k, promote in [(1, 0), (32, 0), (32, 128), (1000, 0)]:
            for rounding in ("nearest_even", "toward_zero"):
                acc = Accumulator(parse_accumulator(fmt), k, promote, rounding)
                gpu = accumulate_matmul(a.cuda(), b.cuda(), acc, backend="triton").cpu()
                if not same(gpu, accumulate_matmul(a, b, acc, backend="torch")):
                    print(f"MISMATCH accumulate kernel vs torch path: {acc} {rounding}")
                    sys.exit(1)
                cases += 1
    a, b = torch.randn(1024, 1024, device="cuda"), torch.randn(1024, 512, device="cuda")
    t_mm = do_bench(lambda: a @ b)
    for k in (1, 32, 128):
        acc = Accumulator(parse_accumulator("e8m13"), k)
        t = do_bench(lambda: accumulate_matmul(a, b, acc))
        print(f"accumulate e8m13 k={k:<4} 1024x1024x512: {t:8.3f} ms = {t / t_mm:8.1f}x torch fp32 matmul ({t_mm:.3f} ms)")
    return cases


def bench(numel: int) -> None:
    x = torch.randn(numel, device="cuda") * 64
    t_clone = do_bench(lambda: x.clone())
    t_native = do_bench(lambda: x.to(torch.float8_e4m3fn).float())
    print(f"\nthroughput on {numel:,} fp32 ({torch.cuda.get_device_name()}), do_bench median ms:")
    print(f"{'what':<44} {'ms':>8} {'GB/s':>8} {'vs clone':>9}")
    rows = [("torch clone (memory floor)", t_clone), ("torch .to(float8_e4m3fn).float()", t_native)]
    for name, rounding in [("e4m3fn", "nearest_even"), ("e5m2", "nearest_even"), ("e8m3", "toward_zero"),
                           ("e8m3", "nearest_even"), ("e2m1fn", "nearest_even"), ("e4m3fn", "stochastic")]:
        rows.append((f"quantize {name} {rounding} (Triton)", do_bench(lambda: quantize(x, name, rounding=rounding, seed=1))))
    x2d = x.view(-1, 4096)
    for name, rounding in [("mxfp8", "nearest_even"), ("mxfp4", "nearest_even"), ("nvfp4", "nearest_even"),
                           ("e2m1fn/b16x16/e4m3fn/tensor", "nearest_even"), ("nvfp4", "stochastic")]:
        rows.append((f"quantize {name} {rounding} (Triton)", do_bench(lambda: quantize(x2d, name, rounding=rounding, seed=1))))
    for label, ms in rows:
        print(f"{label:<44} {ms:>8.3f} {8 * numel / ms / 1e6:>8.0f} {t_clone / ms:>8.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=1 << 28)
    args = parser.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    print(f"bit-exact: {check_bits()} cases (kernel on GPU == torch twin on CPU; == ml_dtypes)")
    print(f"block bit-exact: {check_block_bits()} cases (block kernel on GPU == torch twin on CPU)")
    print(f"accumulate bit-exact: {check_accumulate_bits()} cases (kernel on GPU == torch path on CPU)")
    bench(args.numel)


if __name__ == "__main__":
    main()
