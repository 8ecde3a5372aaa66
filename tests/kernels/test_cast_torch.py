"""The pure-torch cast twin (precisionlab.kernels.cast_torch): its Philox-4x32-10 stream against the
generator written out from its definition (Salmon et al., SC'11) and Random123's known answer, and
the shortcuts of deterministic fp32 casts against the twin's general algorithm."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers.oracles import all_bf16_patterns, assert_same_bits, probe_inputs, random_fp32
from precisionlab import FloatFormat
from precisionlab.kernels.cast_torch import philox_randint

M32 = 0xFFFFFFFF


def philox4x32(counter: tuple[int, int, int, int], key: tuple[int, int], rounds: int = 10) -> tuple[int, ...]:
    """Philox-4x32 in plain Python integers: each round two 32 x 32 -> 64-bit products split into
    hi/lo words, the counter words permuted and xored with the key, the key bumped by the Weyl
    constants."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(rounds):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & M32, (p0 >> 32) ^ c3 ^ k1, p0 & M32
        k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
    return c0, c1, c2, c3


def test_the_written_out_philox_gives_random123s_known_answer():
    """Random123's kat_vectors: philox4x32_10 of counter 0, key 0 (the oracle itself is checked first)."""
    assert philox4x32((0, 0, 0, 0), (0, 0)) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**32 - 1, 2**32 + 7, 2**64 - 1])
def test_philox_randint_is_the_first_word_of_philox4x32_10(seed):
    """`tl.randint(seed, offset)`: counter (offset's low, high 32 bits, 0, 0), key (seed's low, high 32 bits)."""
    offsets = [0, 1, 2, 31, 2**31, 2**32 - 1, 2**32, 2**40 + 5, 2**62 + 3]
    got = philox_randint(seed, torch.tensor(offsets, dtype=torch.int64)).tolist()
    want = [philox4x32((o & M32, o >> 32, 0, 0), (seed & M32, seed >> 32))[0] for o in offsets]
    assert got == want


SHORTCUT_FORMATS = ["e4m3fn", "e5m2", "e2m1fn", "e2m3fn", "e3m2fn", "e4m3fnuz", "e5m2fnuz", "fp16", "e5m10", "e1m6",
                    "e6m1", "e5m3fnuz", "e3m3fn", "e7m7", "bf16", "e8m3", "e8m5", "tf32"]


@pytest.mark.parametrize("name", SHORTCUT_FORMATS)
def test_shortcuts_equal_the_general_algorithm(name):
    """`cast_bits` takes shortcuts for deterministic fp32 casts (add and mask for E8 formats; add and
    mask above the smallest normal and a scaled float rounding below it for narrower ones): bit for
    bit the general algorithm (`specialised=False`) on every bf16 pattern, the format's codes,
    midpoints +- 1 ulp and specials, and random fp32, in every deterministic mode x saturate x
    subnormals, where the shortcut serves the cast."""
    from precisionlab.kernels.cast_torch import _shortcut, cast_bits
    from precisionlab.numerics.cast import cast_spec

    fmt = FloatFormat.parse(name)
    codes = fmt.values() if fmt.bits <= 16 else [fmt.min_subnormal, fmt.min_normal, 1.0, 1.5, fmt.max_finite]  # tf32: 19 bits
    x = np.concatenate([all_bf16_patterns(), probe_inputs(np.array(codes, dtype=np.float64)), random_fp32(1 << 18, seed=3)])
    bits = torch.from_numpy(np.ascontiguousarray(x)).view(torch.int32)
    served = 0
    for rounding in ("nearest_even", "nearest_away", "toward_zero"):
        for saturate in (False, True):
            for subnormals in (True, False):
                spec = cast_spec(fmt, rounding, saturate, subnormals)
                served += _shortcut(spec, torch.float32) is not None
                fast = cast_bits(bits, spec, torch.float32).view(torch.float32).numpy()
                general = cast_bits(bits, spec, torch.float32, specialised=False).view(torch.float32).numpy()
                assert_same_bits(fast, general, x, f"{name} {rounding} saturate={saturate} subnormals={subnormals}")
    assert served == 12  # every deterministic variant of these formats takes a shortcut
