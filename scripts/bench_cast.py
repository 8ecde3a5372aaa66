"""Throughput of precisionlab's CPU cast vs the memory floor and peer emulators.

Everything runs in one process on one input (16M fp32 values, randn * 64, so
normals, subnormals and overflow all occur), best of --repeat timings after a
warm-up call (which also pays torch.compile's one-off compile). Ratios are
what to read: absolute times on a shared 2-core VM are noisy.

    python scripts/bench_cast.py [--numel 16777216] [--repeat 5] [--only element|block]

Peers are timed only where their semantics equal ours on this input (checked
bit for bit, shown in the "same bits" column); a peer that is not installed
is listed as such.

Block formats (--only block): mxfp8, mxfp4 and nvfp4 casts (fake-quantize:
encode and decode back to fp32) of the same values viewed as (rows, 4096), so
every peer sees the same blocks, vs clone and vs torchao's pure-torch
references on CPU (to_mx + to_dtype for MX floor/rceil; NVFP4Tensor.to_nvfp4
with a per-tensor scale + dequantize), gfloat's per-block quantize_block
(float64, Python per element: timed on a slice and scaled to the full size),
and microxcaling where it imports (it is not on PyPI). "same bits" is the
share of bit-identical elements; where some differ, the share within 2 units
in the last place and the largest gap in ulps. On a CUDA machine a GPU section times the Triton
block kernel vs clone and vs torchao (eager and torch.compile'd) with
triton.testing.do_bench; scripts/check_cast_gpu.py checks its bits.

Block timings run each cast alternately with what it is compared with (clone
for "vs clone", our cast for a peer's speed-up), so both see the same machine
and allocator state: on small VMs a fresh 64 MB output costs tens of ms of
page faults, which a run right after another large free may not pay.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from precisionlab import quantize


def best_time(fn, repeat: int) -> float:
    fn()  # warm-up (compiles where that applies)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def same_bits(a, b) -> bool:
    a = torch.as_tensor(np.asarray(a, dtype=np.float32)).view(torch.int32)
    b = torch.as_tensor(np.asarray(b, dtype=np.float32)).view(torch.int32)
    return bool(torch.equal(a, b))


def peers(x: torch.Tensor, xn: np.ndarray):
    """(label, our format, our kwargs, callable) for every peer that imports here."""
    out = []
    try:
        import ml_dtypes

        for name, dt in [("e4m3fn", ml_dtypes.float8_e4m3fn), ("e5m2", ml_dtypes.float8_e5m2), ("e2m1fn", ml_dtypes.float4_e2m1fn)]:
            out.append((f"ml_dtypes astype round trip ({name})", name, dict(saturate=False), lambda dt=dt: xn.astype(dt).astype(np.float32)))
    except ImportError:
        print("ml_dtypes: not installed")
    try:
        import gfloat
        from gfloat.formats import format_info_ocp_e4m3

        out.append(("gfloat round_ndarray (e4m3fn)", "e4m3fn", dict(saturate=False),
                    lambda: gfloat.round_ndarray(format_info_ocp_e4m3, xn.astype(np.float64)).astype(np.float32)))
    except ImportError:
        print("gfloat: not installed")
    try:
        import pychop

        pychop.backend("torch")
        chop_ne, chop_tz = pychop.Chop(exp_bits=8, sig_bits=3, rmode=1), pychop.Chop(exp_bits=8, sig_bits=3, rmode=4)
        out.append(("pychop Chop torch (e8m3 nearest_even)", "e8m3", dict(), lambda: chop_ne(x)))
        out.append(("pychop Chop torch (e8m3 toward_zero)", "e8m3", dict(rounding="toward_zero"), lambda: chop_tz(x)))
    except ImportError:
        print("pychop: not installed")
    try:
        from qtorch.quant import float_quantize

        out.append(("qtorch float_quantize (e8m3 nearest)", "e8m3", dict(rounding="nearest_away"),
                    lambda: float_quantize(x, exp=8, man=3, rounding="nearest")))
    except Exception as err:  # qtorch JIT-builds a C++ extension at import; it may not build
        print(f"qtorch: unavailable ({type(err).__name__}: {str(err).splitlines()[0][:100]})")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=16 * 2**20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", choices=["element", "block"], default=None, help="run one section")
    args = parser.parse_args()

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.numel, generator=gen) * 64
    print(f"input: {args.numel:,} fp32 values; torch threads: {torch.get_num_threads()}")
    if args.only != "block":
        bench_elements(x, args.repeat)
    if args.only != "element":
        bench_blocks(x, args.repeat)
        if torch.cuda.is_available():
            bench_blocks_gpu(x.cuda())
        else:
            print("\nGPU section skipped: no CUDA device")


def bench_elements(x: torch.Tensor, repeat: int) -> None:
    """Element formats: precisionlab's CPU cast vs clone, torch's native fp8 cast and peer emulators."""
    xn = x.numpy()

    t_clone = best_time(lambda: x.clone(), repeat)
    rows = [("torch.clone (memory floor)", t_clone, "", "")]
    t_native = best_time(lambda: x.to(torch.float8_e4m3fn).float(), repeat)
    rows.append(("torch .to(float8_e4m3fn).float()", t_native, "", str(same_bits(x.to(torch.float8_e4m3fn).float(), quantize(x, "e4m3fn", saturate=False)))))

    ours = {}
    cases = [(name, rounding) for name in ("e4m3fn", "e5m2", "e2m1fn", "e8m3")
             for rounding in ("nearest_even", "nearest_away", "toward_zero", "stochastic")]
    for name, rounding in cases:  # each timed alternately with clone: the ratio holds while the machine drifts
        kw = {"seed": 1} if rounding == "stochastic" else {}
        t, t_ref = interleaved(lambda: quantize(x, name, rounding=rounding, **kw), lambda: x.clone(), repeat)
        ours[(name, rounding)] = t
        rows.append((f"precisionlab quantize {name} {rounding}", t, f"{t_ref / t:.2f}x", ""))

    speedups = []
    for label, name, kw, fn in peers(x, xn):
        ref = fn()
        match = same_bits(ref, quantize(x, name, **kw))
        t = best_time(fn, max(1, repeat // 2) if "gfloat" not in label else 1)
        rounding = kw.get("rounding", "nearest_even")
        mine = ours.get((name, rounding)) or best_time(lambda: quantize(x, name, **kw), repeat)
        speedups.append((label, t / mine, match))
        rows.append((label, t, f"{t_clone / t:.2f}x", str(match)))

    print(f"\n{'what':<58} {'ms':>9} {'vs clone':>9} {'same bits':>9}")
    for label, t, ratio, match in rows:
        print(f"{label:<58} {1e3 * t:>9.1f} {ratio:>9} {match:>9}")
    print("\n'vs clone' = clone time / this time (1.00x = memory-bandwidth floor; our casts: vs clone timed "
          "alternately with them).")
    print(f"precisionlab vs torch's native fp8 cast (e4m3fn): {t_native / ours[('e4m3fn', 'nearest_even')]:.2f}x")
    if speedups:
        print("precisionlab speed-up over each peer, same format and rounding:")
        for label, ratio, match in speedups:
            print(f"  {label:<56} {ratio:6.1f}x{'' if match else '  (semantics differ on this input)'}")


# -- block formats ----------------------------------------------------------------

BLOCK_K = 4096  # the (rows, K) view every block cast sees: blocks of 16/32 along K, identical for all


def agreement(a: torch.Tensor, b: torch.Tensor) -> str:
    """Share of bit-identical elements; where some differ, the share within 2 ulps and the largest gap."""
    a, b = a.reshape(-1).float().contiguous(), b.reshape(-1).float().contiguous()
    ia, ib = a.view(torch.int32).to(torch.int64), b.view(torch.int32).to(torch.int64)
    nan = a.isnan() & b.isnan()
    gap = torch.where(nan, 0, (ia - ib).abs())
    same = (gap == 0).float().mean().item()
    if same == 1.0:
        return "100%"
    return f"{100 * same:.2f}% ({100 * (gap <= 2).float().mean().item():.3f}% <=2ulp, max {int(gap.max())} ulp)"


def block_peers(x2d: torch.Tensor):
    """(label, our format, callable returning fp32 of x2d's shape) for every block peer that runs here."""
    out = []
    try:
        from torchao.prototype.mx_formats.mx_tensor import ScaleCalculationMode, to_dtype, to_mx

        for ours, dt, mode in [("mxfp8", torch.float8_e4m3fn, ScaleCalculationMode.FLOOR),
                               ("mxfp4", torch.float4_e2m1fn_x2, ScaleCalculationMode.FLOOR),
                               ("e4m3fn/b32/e8m0/rceil", torch.float8_e4m3fn, ScaleCalculationMode.RCEIL)]:
            def mx(dt=dt, mode=mode):
                scale, data = to_mx(x2d, dt, 32, mode)
                return to_dtype(data, scale, dt, 32, torch.float32)

            out.append((f"torchao to_mx+to_dtype ({mode.name.lower()}, {dt})", ours, mx))
    except Exception as err:  # noqa: BLE001 (not installed, or an API change)
        print(f"torchao MX: unavailable ({type(err).__name__}: {str(err).splitlines()[0][:100]})")
    try:
        from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale

        def nvfp4():
            pts = per_tensor_amax_to_scale(x2d.abs().amax())
            return NVFP4Tensor.to_nvfp4(x2d, per_tensor_scale=pts).dequantize(torch.float32)

        out.append(("torchao NVFP4Tensor.to_nvfp4+dequantize", "nvfp4", nvfp4))
    except Exception as err:  # noqa: BLE001
        print(f"torchao NVFP4: unavailable ({type(err).__name__}: {str(err).splitlines()[0][:100]})")
    try:
        import mx  # microxcaling's package name  # noqa: F401

        print("microxcaling: imported, but not wired into this bench")
    except ImportError:
        print("microxcaling: not installed (not on PyPI: `pip download microxcaling` finds no distribution)")
    return out


def gfloat_block(x2d: torch.Tensor, element: str, numel: int):
    """gfloat's quantize_block over the first `numel` elements, block by block (float64), as fp32."""
    from gfloat.block import BlockFormatInfo, compute_scale_amax, quantize_block
    from gfloat.formats import format_info_ocp_e2m1, format_info_ocp_e4m3, format_info_ocp_e8m0

    etype = {"mxfp8": format_info_ocp_e4m3, "mxfp4": format_info_ocp_e2m1}[element]
    fi = BlockFormatInfo(element, etype, 32, format_info_ocp_e8m0)
    blocks = x2d.reshape(-1)[:numel].double().numpy().reshape(-1, 32)
    out = [quantize_block(fi, b, compute_scale_amax) for b in blocks]
    return torch.from_numpy(np.concatenate(out).astype(np.float32))


def interleaved(fn, reference, repeat: int) -> tuple[float, float]:
    """(best time of fn, best time of reference), the two timed alternately after a warm-up of each,
    so their ratio holds when a shared machine's speed drifts during the run."""
    fn(), reference()
    t_fn, t_ref = [], []
    for _ in range(repeat):
        for f, times in ((reference, t_ref), (fn, t_fn)):
            start = time.perf_counter()
            f()
            times.append(time.perf_counter() - start)
    return min(t_fn), min(t_ref)


def bench_blocks(x: torch.Tensor, repeat: int) -> None:
    """Block formats on CPU: precisionlab's quantize vs clone and the peers, ratios from this one run
    (our casts timed alternately with clone, see `interleaved`)."""
    x2d = x.reshape(-1, BLOCK_K)
    print(f"\nblock formats: {x.numel():,} fp32 values as {tuple(x2d.shape)}, blocks along the last axis")
    t_clone = best_time(lambda: x2d.clone(), repeat)
    rows = [("torch.clone (memory floor)", t_clone, "", "")]
    ours = {}
    for name in ("mxfp8", "mxfp4", "nvfp4", "e4m3fn/b32/e8m0/rceil"):
        ours[name], t_ref = interleaved(lambda: quantize(x2d, name), lambda: x2d.clone(), repeat)
        rows.append((f"precisionlab quantize {name}", ours[name], f"{t_ref / ours[name]:.2f}x", ""))
    t = best_time(lambda: quantize(x2d, "nvfp4", rounding="stochastic", seed=1), 1)
    rows.append(("precisionlab quantize nvfp4 stochastic", t, f"{t_clone / t:.2f}x", ""))

    speedups = []
    for label, name, fn in block_peers(x2d):
        match = agreement(fn(), quantize(x2d, name))
        t, mine = interleaved(fn, lambda: quantize(x2d, name), max(1, repeat // 2))
        speedups.append((f"{label} [{1e3 * t:.0f} vs {1e3 * mine:.0f} ms]", t / mine, match))
        rows.append((label, t, f"{t_clone / t:.2f}x", match))
    try:
        part = min(1 << 15, x.numel())
        for name in ("mxfp8", "mxfp4"):
            start = time.perf_counter()
            ref = gfloat_block(x2d, name, part)
            t = (time.perf_counter() - start) * x.numel() / part
            match = agreement(ref, quantize(x2d, name).reshape(-1)[:part])
            label = f"gfloat quantize_block ({name}; {part:,} values, scaled)"
            speedups.append((f"{label} [{1e3 * t:.0f} vs {1e3 * ours[name]:.0f} ms]", t / ours[name], match))
            rows.append((label, t, f"{t_clone / t:.4f}x", match))
    except ImportError:
        print("gfloat: not installed")

    print(f"\n{'what':<60} {'ms':>10} {'vs clone':>9}  same bits")
    for label, t, ratio, match in rows:
        print(f"{label:<60} {1e3 * t:>10.1f} {ratio:>9}  {match}")
    print("\n'vs clone' = clone time / this time (our casts: vs clone timed alternately with them);"
          " 'same bits' = share of elements bit-identical to ours.")
    if speedups:
        print("precisionlab speed-up over each block peer (same format; torchao timed alternately with ours):")
        for label, ratio, match in speedups:
            print(f"  {label:<78} {ratio:7.1f}x  (same bits: {match})")


def bench_blocks_gpu(x: torch.Tensor) -> None:
    """The Triton block kernel on the GPU vs clone and torchao (eager and torch.compile'd), do_bench medians."""
    from triton.testing import do_bench

    x2d = x.reshape(-1, BLOCK_K)
    print(f"\nGPU ({torch.cuda.get_device_name()}): {x.numel():,} fp32 as {tuple(x2d.shape)}, do_bench median ms")
    t_clone = do_bench(lambda: x2d.clone())
    rows = [("torch clone (memory floor)", t_clone, "")]
    ours, speedups = {}, []
    for name, kw in [("mxfp8", {}), ("mxfp4", {}), ("nvfp4", {}), ("e4m3fn/b32/e8m0/rceil", {}),
                     ("e2m1fn/b16x16/e4m3fn/tensor", {}), ("nvfp4", dict(rounding="stochastic", seed=1))]:
        label = f"quantize {name} {kw.get('rounding', 'nearest_even')} (Triton)"
        ours[(name, bool(kw))] = t = do_bench(lambda: quantize(x2d, name, backend="triton", **kw))
        rows.append((label, t, ""))
    for label, name, fn in block_peers(x2d):
        match = agreement(fn(), quantize(x2d, name))
        timed = [(label + " eager", fn)]
        try:
            compiled = torch.compile(fn)
            compiled()
            timed.append((label + " compiled", compiled))
        except Exception as err:  # noqa: BLE001
            print(f"torch.compile of {label}: {type(err).__name__}")
        for what, f in timed:
            t = do_bench(f)
            rows.append((what, t, match))
            speedups.append((what, t / ours[(name, False)]))
    print(f"{'what':<60} {'ms':>8} {'GB/s':>8} {'vs clone':>9}  same bits")
    for label, ms, match in rows:
        print(f"{label:<60} {ms:>8.3f} {8 * x.numel() / ms / 1e6:>8.0f} {t_clone / ms:>8.2f}x  {match}")
    print("Triton kernel speed-up over each torchao path (same format):")
    for what, ratio in speedups:
        print(f"  {what:<62} {ratio:7.2f}x")


if __name__ == "__main__":
    main()
