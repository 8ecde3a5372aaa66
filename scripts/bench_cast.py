"""Throughput of precisionlab's CPU cast vs the memory floor and peer emulators.

Everything runs in one process on one input (16M fp32 values, randn * 64, so
normals, subnormals and overflow all occur), best of --repeat timings after a
warm-up call (which also pays torch.compile's one-off compile). Ratios are
what to read: absolute times on a shared 2-core VM are noisy.

    python scripts/bench_cast.py [--numel 16777216] [--repeat 5]

Peers are timed only where their semantics equal ours on this input (checked
bit for bit, shown in the "same bits" column); a peer that is not installed
is listed as such.
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
    args = parser.parse_args()

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.numel, generator=gen) * 64
    xn = x.numpy()
    print(f"input: {args.numel:,} fp32 values; torch threads: {torch.get_num_threads()}")

    t_clone = best_time(lambda: x.clone(), args.repeat)
    rows = [("torch.clone (memory floor)", t_clone, "", "")]
    t_native = best_time(lambda: x.to(torch.float8_e4m3fn).float(), args.repeat)
    rows.append(("torch .to(float8_e4m3fn).float()", t_native, "", str(same_bits(x.to(torch.float8_e4m3fn).float(), quantize(x, "e4m3fn", saturate=False)))))

    ours = {}
    cases = [("e4m3fn", "nearest_even"), ("e5m2", "nearest_even"), ("e8m3", "nearest_even"), ("e8m3", "toward_zero"),
             ("e2m1fn", "nearest_even"), ("e8m3", "nearest_away")]
    for name, rounding in cases:
        t = best_time(lambda: quantize(x, name, rounding=rounding), args.repeat)
        ours[(name, rounding)] = t
        rows.append((f"precisionlab quantize {name} {rounding}", t, f"{t_clone / t:.2f}x", ""))
    t = best_time(lambda: quantize(x, "e4m3fn", rounding="stochastic", seed=1), 1)
    rows.append(("precisionlab quantize e4m3fn stochastic (eager Philox)", t, f"{t_clone / t:.2f}x", ""))

    speedups = []
    for label, name, kw, fn in peers(x, xn):
        ref = fn()
        match = same_bits(ref, quantize(x, name, **kw))
        t = best_time(fn, max(1, args.repeat // 2) if "gfloat" not in label else 1)
        rounding = kw.get("rounding", "nearest_even")
        mine = ours.get((name, rounding)) or best_time(lambda: quantize(x, name, **kw), args.repeat)
        speedups.append((label, t / mine, match))
        rows.append((label, t, f"{t_clone / t:.2f}x", str(match)))

    print(f"\n{'what':<58} {'ms':>9} {'vs clone':>9} {'same bits':>9}")
    for label, t, ratio, match in rows:
        print(f"{label:<58} {1e3 * t:>9.1f} {ratio:>9} {match:>9}")
    print("\n'vs clone' = clone time / this time (1.00x = memory-bandwidth floor).")
    print(f"precisionlab vs torch's native fp8 cast (e4m3fn): {t_native / ours[('e4m3fn', 'nearest_even')]:.2f}x")
    if speedups:
        print("precisionlab speed-up over each peer, same format and rounding:")
        for label, ratio, match in speedups:
            print(f"  {label:<56} {ratio:6.1f}x{'' if match else '  (semantics differ on this input)'}")


if __name__ == "__main__":
    main()
