"""Run under TRITON_INTERPRET=1 (set before triton is imported, so nested
@triton.jit helpers such as tl.randint are interpreted too): compares the
Triton kernel on CPU tensors with the torch twin, bit for bit.

Usage: TRITON_INTERPRET=1 python tests/interpreted_kernel_check.py FORMAT...
Prints one line per format; exits 1 on the first mismatch. Also checks that
the torch Philox twin reproduces `tl.randint` (the kernel's random stream).
"""

import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1", "set TRITON_INTERPRET=1"

import numpy as np  # noqa: E402
import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from helpers.oracles import (  # noqa: E402
    all_bf16_patterns,
    assert_same_bits,
    probe_inputs,
    random_fp32,
)
from precisionlab import FloatFormat, quantize  # noqa: E402
from precisionlab.kernels.cast_torch import philox_randint  # noqa: E402

MODES = ["nearest_even", "nearest_away", "toward_zero", "stochastic"]


def check(name: str) -> int:
    fmt = FloatFormat.parse(name)
    # 2^16 + probes + 4099 random values: not a multiple of the 1024 block
    x = np.concatenate([all_bf16_patterns(), probe_inputs(np.array(fmt.values())), random_fp32(4099, seed=fmt.bits)])
    x = torch.from_numpy(x)
    cases = [dict(rounding=r, saturate=s, subnormals=True) for r in MODES for s in (True, False)]
    cases += [dict(rounding=r, saturate=False, subnormals=False) for r in ("nearest_even", "stochastic")]
    for kw in cases:
        a = quantize(x, name, backend="torch", seed=99, **kw)
        b = quantize(x, name, backend="triton", seed=99, **kw)
        assert_same_bits(b.numpy(), a.numpy(), x.numpy(), f"{name} {kw}")
    return len(cases)


@triton.jit
def _randint_kernel(out_ptr, seed, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.randint(seed, offs), mask=offs < n)


def check_philox(seed: int, n: int = 3000) -> None:
    out = torch.empty(n, dtype=torch.int32)
    _randint_kernel[(triton.cdiv(n, 1024),)](out, seed, n, BLOCK=1024)
    if not torch.equal(out.to(torch.int64) & 0xFFFFFFFF, philox_randint(seed, torch.arange(n))):
        raise AssertionError(f"torch Philox differs from tl.randint for seed {seed}")


if __name__ == "__main__":
    for seed in (0, 1, 2**31 + 5, 2**40 + 3):
        check_philox(seed)
    print("philox: torch twin reproduces tl.randint")
    for name in sys.argv[1:]:
        print(f"{name}: {check(name)} cases bit-identical")
