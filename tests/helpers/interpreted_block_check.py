"""Run under TRITON_INTERPRET=1 (set before triton is imported, so the kernel's @triton.jit helpers
and tl.randint are interpreted too): the Triton block kernel on CPU tensors against the torch twin
(precisionlab/kernels/block_torch.py), bit for bit (NaN compared as NaN: the twin writes float('nan')).

Usage: TRITON_INTERPRET=1 PRECISIONLAB_COMPILE=0 python tests/helpers/interpreted_block_check.py
Prints one line per group of cases and "block kernel: N cases bit-identical"; exits 1 on the
first mismatch. Inputs are small (the interpreter is slow) but hit every branch: partial last
blocks along both axes, NaN/Inf/zero/subnormal blocks, amax just below a power of two and at the
rceil boundary, blocks spanning the whole fp32 exponent range, chunked blocks (> 2048 elements).
"""

import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1", "set TRITON_INTERPRET=1"

import torch  # noqa: E402

from precisionlab import quantize  # noqa: E402
from precisionlab.numerics.blocks import parse_format  # noqa: E402

MODES = ["nearest_even", "nearest_away", "toward_zero", "stochastic"]
SEED = 2**40 + 11  # > 2^32: both Philox key words matter


def _bits(v: float) -> int:
    return torch.tensor([v], dtype=torch.float32).view(torch.int32).item()


def corner_input(rows: int, K: int, B: int, C: int, elem_max: float, seed: int) -> torch.Tensor:
    """(rows, K) fp32: random blocks over the whole exponent range, then special blocks in row-block 0."""
    g = torch.Generator().manual_seed(seed)
    nbr, nbc = -(-rows // C), -(-K // B)
    exps = torch.randint(-150, 125, (nbr, nbc), generator=g).float()
    scale = torch.exp2(exps).repeat_interleave(C, 0).repeat_interleave(B, 1)[:rows, :K]
    x = torch.randn(rows, K, generator=g) * scale
    # a few rows of random finite bit patterns: wildly different exponents inside one block
    pat = torch.randint(0, 2**31, (min(rows, 2), K), generator=g, dtype=torch.int64)
    pat = torch.where((pat & 0x7F800000) == 0x7F800000, pat & 0x3FFFFFFF, pat) | ((pat & 1) << 31)
    x[-pat.shape[0]:] = pat.to(torch.int32).view(torch.float32)
    # special blocks along row-block 0 (each covers rows 0..C-1, cols j*B .. j*B+B-1)
    r = slice(0, min(C, rows))
    def blk(j):  # noqa: E306
        return (r, slice(j * B, min((j + 1) * B, K)))
    sub = torch.randint(0, 0x800000, (rows, K), generator=g, dtype=torch.int64).to(torch.int32).view(torch.float32)

    def peak(target: float):
        """Fill a block with values in (-0.9, 0.9) * target, then put target itself first: amax == target."""
        def fill(v):
            v.copy_((torch.rand(v.shape, generator=g) * 2 - 1) * (0.9 * target))
            v[0, 0] = target
        return fill

    below_two = torch.tensor([0x3FFFFFFF], dtype=torch.int32).view(torch.float32).item()  # 2 - 2^-22
    above = torch.nextafter(torch.tensor(elem_max * 4.0), torch.tensor(1e30)).item()
    specials = [
        lambda v: v.__setitem__((0, 0), float("nan")),  # NaN block
        lambda v: v.__setitem__((0, -1), float("inf")),  # +Inf block
        lambda v: v.__setitem__((-1, 0), float("-inf")),  # -Inf block
        lambda v: v.copy_(torch.where(torch.arange(v.numel()).view(v.shape) % 2 == 0, 0.0, -0.0)),  # +-0 block
        lambda v: v.copy_(sub[: v.shape[0], : v.shape[1]]),  # fp32 subnormals only
        peak(below_two),  # amax just below a power of two (floor: log2 must not round up)
        peak(0.125),  # amax exactly a power of two
        peak(elem_max / 32),  # amax == max_elem * 2^j: rceil does not bump
        peak(above),  # one ulp above max_elem * 2^j: rceil bumps, floor clips
        lambda v: (v.mul_(1e-30), v.__setitem__((0, -1), -3.0e38)),  # one huge value beside tiny ones
    ]
    for j, fill in enumerate(specials):
        if j < nbc:
            fill(x[blk(j)])
    return x


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(((a.view(torch.int32) == b.view(torch.int32)) | (a.isnan() & b.isnan())).all())


def check(x: torch.Tensor, name: str, axis: int = -1, **kw) -> None:
    a = quantize(x, name, axis=axis, backend="torch", seed=SEED, **kw)
    b = quantize(x, name, axis=axis, backend="triton", seed=SEED, **kw)
    if not same(a, b):
        bad = ((a.view(torch.int32) != b.view(torch.int32)) & ~(a.isnan() & b.isnan())).nonzero()[0].tolist()
        idx = tuple(bad)
        print(f"MISMATCH {name} axis={axis} {kw} shape={tuple(x.shape)} at {idx}: x={x[idx].item()!r} "
              f"twin={a[idx].item()!r} kernel={b[idx].item()!r}")
        sys.exit(1)


def shape_for(B: int, C: int) -> tuple[int, int]:
    """10 full blocks (room for the specials) plus a partial one along K, partial row-blocks too;
    chunked blocks (> 2048 elements): one full block and a partial one."""
    nbc = 10 if B * C <= 2048 else 1
    K = nbc * B + max(1, B // 3)
    rows = 2 * C + max(1, C // 2) if C > 1 else (5 if B * C <= 2048 else 2)
    return rows, K


# (format, rounding modes, extra option sets)
GROUPS = [
    ("mxfp8", MODES, [dict(saturate=False), dict(subnormals=False)]),
    ("mxfp8_e5m2", MODES, [dict(saturate=False), dict(saturate=False, subnormals=False, rounding="stochastic")]),
    ("mxfp6", MODES, []),
    ("mxfp6_e3m2", MODES, []),
    ("mxfp4", MODES, [dict(subnormals=False)]),
    ("e4m3fn/b32/e8m0/rceil", MODES, []),
    ("e2m1fn/b32/e8m0/rceil", MODES, []),
    ("nvfp4", MODES, [dict(subnormals=False)]),
    ("e2m1fn/b16x16/e4m3fn/tensor", MODES, []),  # NVFP4 16x16 weight blocks
    ("e4m3fn/b16x16/e8m0", ["nearest_even", "stochastic"], []),  # 2-D MX
    ("e4m3fn/b128/fp32", MODES, []),  # generic rule amax, fp32 scale
    ("e2m1fn/b32/bf16", MODES, []),  # bf16 scale
    ("e2m1fn/b16/e4m3fn", ["nearest_even", "stochastic"], []),  # amax rule, scales that underflow to 0
    ("e4m3fn/b4096/e8m0", ["nearest_even", "stochastic"], []),  # chunked 1-D block
    ("e2m1fn/b64x64/e4m3fn/tensor", ["nearest_even", "stochastic"], []),  # chunked 2-D block, tensor scale
]


def main() -> None:
    cases = 0
    for gi, (name, modes, extras) in enumerate(GROUPS):
        fmt = parse_format(name)
        B, C = fmt.block, fmt.block_cols
        x = corner_input(*shape_for(B, C), B, C, fmt.element.max_finite, seed=gi)
        for kw in [dict(rounding=m) for m in modes] + extras:
            check(x, name, **kw)
            cases += 1
        print(f"{name}: {len(modes) + len(extras)} cases on {tuple(x.shape)}", flush=True)

    # two-level scaling: amax_t corner cases (every case also runs the AMAX_PASS)
    g = torch.Generator().manual_seed(99)
    tensors = {
        "all zero": torch.zeros(3, 40),
        "subnormal amax_t (S = FLT_MAX)": torch.randint(0, 0x800000, (3, 40), generator=g).to(torch.int32).view(torch.float32),
        "NaN block holds the largest finite value": torch.randn(3, 40, generator=g),
        "amax_t near FLT_MAX": torch.randn(3, 40, generator=g) * 1e37,
    }
    # amax_t = 1000 (S = 2.688): these block amaxes give amax * (S * (1/6)) and (amax * S) * (1/6) on
    # different sides of an e4m3fn rounding midpoint (found by a float32 search), so s_b depends on the order
    order = torch.tensor([0x3D17C925, 0x3D4D5B6D, 0x3D5F36DC, 0x3D8A6492, 0x3D97C925], dtype=torch.int32)
    assoc = torch.rand(6, 16, generator=g) * 0.01
    assoc[0, 0] = 1000.0
    assoc[1:, 3] = order.view(torch.float32)
    tensors["scale products at e4m3fn midpoints"] = assoc
    tensors["NaN block holds the largest finite value"][1, 16:32] = 1e30
    tensors["NaN block holds the largest finite value"][1, 20] = float("nan")
    for label, x in tensors.items():
        for m in ("nearest_even", "stochastic"):
            check(x, "nvfp4", rounding=m)
            cases += 1
    print(f"nvfp4 tensor-scale corners: {2 * len(tensors)} cases")

    # many blocks of random amax: scale roundings that land near a scale-format rounding boundary
    dense = torch.randn(512, 64, generator=g) * torch.exp2(torch.randint(-20, 20, (512, 1), generator=g).float())
    for name in ("nvfp4", "e2m1fn/b32/bf16", "e4m3fn/b64/e5m2"):
        check(dense, name)
        cases += 1
    print("dense random blocks: 3 cases")

    # through quantize's axis handling: blocks along a non-last axis, 3-D and 0-size/1-element tensors
    x3 = corner_input(40, 7 * 5, 32, 1, 6.0, seed=123).view(40, 7, 5)
    check(x3, "mxfp4", axis=0)
    check(x3, "nvfp4", axis=1, rounding="stochastic")
    check(torch.randn(70, 33, generator=g), "e2m1fn/b16x16/e4m3fn/tensor", axis=0)
    check(torch.tensor(3.0), "mxfp8")
    check(torch.empty(0, 32), "nvfp4")
    cases += 5
    print("axis / odd shapes: 5 cases")
    print(f"block kernel: {cases} cases bit-identical")


if __name__ == "__main__":
    main()
