"""Block-scaled formats: parsing, bits, and `quantize` bit for bit against independent references
(gfloat's block API for OCP MX, the rceil and NVFP4 formulas written out in numpy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gfloat.formats import (
    format_info_bfloat16,
    format_info_binary32,
    format_info_ocp_e2m1,
    format_info_ocp_e4m3,
)
from helpers.block_oracles import (
    GFLOAT_ELEMENTS,
    amax_rule,
    block_probe_inputs,
    gfloat_mx,
    nvfp4_design,
    rceil_mx,
)
from helpers.oracles import assert_same_bits

from precisionlab import BlockFormat, FloatFormat, parse_format, quantize
from precisionlab.numerics.blocks import NAMED_BLOCK_FORMATS

MX_ELEMENTS = {"mxfp8_e4m3": "e4m3fn", "mxfp8_e5m2": "e5m2", "mxfp6_e2m3": "e2m3fn", "mxfp6_e3m2": "e3m2fn", "mxfp4": "e2m1fn"}


@pytest.fixture(autouse=True)
def eager_twin(monkeypatch):
    """Oracle tests check the eager twin; the compiled copy is checked against it below."""
    monkeypatch.setenv("PRECISIONLAB_COMPILE", "0")


def ours(x: np.ndarray, fmt, **kw) -> np.ndarray:
    return quantize(torch.from_numpy(np.ascontiguousarray(x)), fmt, backend="torch", **kw).numpy()


# -- names, bits, parsing -------------------------------------------------------


@pytest.mark.parametrize(
    "name, bits",
    [("mxfp8", 8.25), ("mxfp8_e4m3", 8.25), ("mxfp8_e5m2", 8.25), ("mxfp6", 6.25), ("mxfp6_e2m3", 6.25),
     ("mxfp6_e3m2", 6.25), ("mxfp4", 4.25), ("nvfp4", 4.5), ("e2m1fn/b16x16/e4m3fn/tensor", 4 + 8 / 256),
     ("e4m3fn/b128/fp32", 8.25), ("e2m1fn/b32/bf16", 4.5)],
)
def test_bits_per_element(name, bits):
    assert parse_format(name).bits_per_element == bits


def test_named_formats_are_what_design_says():
    assert set(NAMED_BLOCK_FORMATS) == {"mxfp8", "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4", "nvfp4"}
    for name, element in MX_ELEMENTS.items():
        assert parse_format(name) == BlockFormat(FloatFormat.parse(element), 32, scale="e8m0", rule="floor")
    assert parse_format("mxfp8") == parse_format("mxfp8_e4m3") and parse_format("mxfp6") == parse_format("mxfp6_e2m3")
    nv = parse_format("nvfp4")
    assert (nv.element.name, nv.block, nv.block_cols, nv.scale, nv.rule, nv.tensor_scale) == ("e2m1fn", 16, 1, "e4m3fn", "amax", True)
    assert parse_format("nvfp4") == parse_format("e2m1fn/b16/e4m3fn/tensor") == parse_format("e2m1fn/b16/e4m3fn/amax/tensor")


@pytest.mark.parametrize(
    "name", [*NAMED_BLOCK_FORMATS, "e2m1fn/b32/e8m0", "e4m3fn/b128/fp32", "e2m1fn/b16x16/e4m3fn/tensor",
             "e4m3fn/b32/e8m0/rceil", "e3m4/b1/e8m0", "e2m1fn/b8/bf16", "e5m2/b65536/e8m0"],
)
def test_parse_round_trips(name):
    fmt = parse_format(name)
    assert parse_format(fmt) is fmt
    assert parse_format(fmt.spelling) == fmt
    assert parse_format(fmt.spelling).name == fmt.spelling  # the canonical spelling names itself
    assert fmt.name == name or name not in NAMED_BLOCK_FORMATS
    assert str(fmt) == fmt.name


def test_generic_names_are_canonical():
    assert parse_format("e2m1fn/b32/e8m0/floor").name == "e2m1fn/b32/e8m0"  # the default rule is not spelled
    assert parse_format("e4m3fn/b128/fp32/amax").name == "e4m3fn/b128/fp32"
    assert parse_format("e4m3fn/b32/e8m3").scale == "e8m3" and parse_format("e4m3fn/b32/bf16").scale == "bf16"


def test_element_names_still_parse_to_float_formats():
    assert parse_format("e4m3fn") == FloatFormat.parse("e4m3fn")
    assert isinstance(parse_format("bf16"), FloatFormat)


@pytest.mark.parametrize(
    "name, words",
    [
        ("e2m1fn/b0/e8m0", "power of two"),
        ("e2m1fn/b24/e8m0", "power of two"),
        ("e2m1fn/b32x3/e8m0", "power of two"),
        ("e2m1fn/b32x0/e8m0", "power of two"),
        ("e2m1fn/b1024x1024/e8m0", "at most"),
        ("e2m1fn/b032/e8m0", "bB or bBxC"),
        ("e2m1fn/32/e8m0", "bB or bBxC"),
        ("e2m1fn/b32/e9m1", "unknown scale format"),
        ("e2m1fn/b32/ue8m0", "unknown scale format"),
        ("e2m1fn/b32/e8m0/ceil", "unknown scale rule"),
        ("e2m1fn/b32/e8m0/amax", "does not go with scale e8m0"),
        ("e2m1fn/b32/fp32/floor", "does not go with scale fp32"),
        ("e2m1fn/b32/fp32/rceil", "does not go with scale fp32"),
        ("e2m1fn/b32/e8m0/tensor", "needs rule amax"),
        ("e2m1fn/b32", "needs ELEMENT/bB[xC]/SCALE"),
        ("e2m1fn/b32/e8m0/floor/tensor/x", "too many parts"),
        ("e9m1/b32/e8m0", "unknown element format"),
        ("mxfp3", "block formats: mxfp8"),
        ("MXFP4", "unknown format"),
    ],
)
def test_bad_names_are_one_line_naming_the_grammar(name, words):
    with pytest.raises(ValueError) as err:
        parse_format(name)
    message = str(err.value)
    assert words in message and "\n" not in message
    if words in ("unknown format", "block formats: mxfp8", "needs ELEMENT/bB[xC]/SCALE", "power of two"):
        assert "ELEMENT/bB[xC]/SCALE" in message  # names the block grammar (and the element names where relevant)
    if words in ("unknown format", "unknown element format", "unknown scale format"):
        assert "eXmY" in message


def test_bad_constructions():
    with pytest.raises(ValueError, match="power of two"):
        BlockFormat(FloatFormat.parse("e2m1fn"), 0)
    with pytest.raises(ValueError, match="power of two"):
        BlockFormat(FloatFormat.parse("e2m1fn"), True)
    with pytest.raises(ValueError, match="does not go with"):
        BlockFormat(FloatFormat.parse("e2m1fn"), 16, scale="e4m3fn")  # rule defaults to floor: needs e8m0


def test_describe():
    d = parse_format("mxfp4").describe()
    assert (d["element"], d["block"], d["scale"], d["rule"], d["bits/elem"]) == ("e2m1fn", "32", "e8m0", "floor", "4.25")
    assert parse_format("mxfp4").max_finite == 6 * 2.0**127 and parse_format("mxfp4").min_subnormal == 2.0**-128
    d = parse_format("nvfp4").describe()
    assert (d["block"], d["scale"], d["bits/elem"], d["max"]) == ("16", "e4m3fn + fp32 tensor", "4.5", "2688")
    assert parse_format("e2m1fn/b16x16/e4m3fn").describe()["block"] == "16x16"


def test_bad_calls():
    x = torch.ones(4, 8)
    with pytest.raises(ValueError, match="out of range"):
        quantize(x, "mxfp4", axis=2)
    with pytest.raises(ValueError, match="out of range"):
        quantize(x, "mxfp4", axis=-3)
    with pytest.raises(ValueError, match="2-D blocks"):
        quantize(torch.ones(2, 4, 8), "e2m1fn/b16x16/e4m3fn")
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        quantize(x.double(), "mxfp4")
    with pytest.raises(ValueError, match="unknown rounding"):
        quantize(x, "mxfp4", rounding="up")


# -- OCP MX (rule floor) against gfloat's block API ------------------------------


@pytest.mark.parametrize("name", sorted(MX_ELEMENTS))
@pytest.mark.parametrize("rounding", ["nearest_even", "nearest_away", "toward_zero"])
def test_mx_floor_matches_gfloat(name, rounding):
    x = block_probe_inputs(12, 80, 32, seed=len(name))  # two full blocks and a partial one of 16 per row
    ref = gfloat_mx(x, MX_ELEMENTS[name], 32, rounding)
    assert_same_bits(ours(x, name, rounding=rounding), ref, x, f"{name} {rounding}")


def test_mx_floor_matches_gfloat_along_other_axes():
    rows = block_probe_inputs(22, 40, 32, seed=3)  # (30, 40): blocks 32 + a partial 8 along the last axis
    x3 = np.ascontiguousarray(rows.reshape(2, 15, 40).transpose(0, 2, 1))  # (2, 40, 15): the block axis is 1
    ref = gfloat_mx(rows, "e2m1fn", 32).reshape(2, 15, 40).transpose(0, 2, 1)
    for axis in (1, -2):
        assert_same_bits(ours(x3, "mxfp4", axis=axis), ref, x3, f"mxfp4 axis={axis}")
    x2 = np.ascontiguousarray(rows.T)  # (40, 30): blocks along axis 0
    assert_same_bits(ours(x2, "mxfp8_e5m2", axis=0), gfloat_mx(rows, "e5m2", 32).T, x2, "mxfp8_e5m2 axis=0")


def test_mx_2d_blocks_match_gfloat():
    x = block_probe_inputs(24, 40, 8, seed=5)[:, :36]  # (32, 36): 8x8 tiles with partial tiles in both axes
    x = np.ascontiguousarray(x[:30])
    assert_same_bits(ours(x, "e2m1fn/b8x8/e8m0"), gfloat_mx(x, "e2m1fn", 8, C=8), x, "e2m1fn/b8x8/e8m0")
    ref = gfloat_mx(np.ascontiguousarray(x.T), "e4m3fn", 4, C=2).T
    assert_same_bits(ours(x, "e4m3fn/b4x2/e8m0", axis=0), ref, x, "e4m3fn/b4x2/e8m0 axis=0")


def test_mx_corner_cases_by_hand():
    def mx4(v):
        return ours(np.array([v], dtype=np.float32), "mxfp4")[0].tolist()

    below = float(np.nextafter(np.float32(4.0), np.float32(0)))  # floor(log2) = 1, not 2: s = 2^-1, 3.99.. -> 6 * 2^-1
    assert mx4([below, 1.0]) == [3.0, 1.0]
    assert mx4([4.0, 1.0]) == [4.0, 1.0]
    assert mx4([7.5, 1.0]) == [6.0, 1.0]  # amax mantissa above e2m1's max: OCP clips (s = 2^0)
    assert [math.copysign(1, v) for v in mx4([0.0, -0.0])] == [1, -1]  # all-zero block stays (signed) zero
    assert all(math.isnan(v) for v in mx4([1.0, math.inf, 2.0]))  # Inf makes the block NaN
    assert all(math.isnan(v) for v in mx4([1.0, math.nan]))
    sub = float(np.float32(2.0**-140))  # amax far below 2^-127 * 4: clamped scale 2^-127, elements underflow
    assert mx4([sub, 2.0**-126]) == [0.0, 2.0**-126]


# -- rule rceil against the formula -------------------------------------------------


@pytest.mark.parametrize("element", sorted(GFLOAT_ELEMENTS))
def test_rceil_matches_the_formula(element):
    x = block_probe_inputs(10, 72, 32, seed=7)
    fi = GFLOAT_ELEMENTS[element]
    # amax exactly max_elem * 2^j and one fp32 ulp either side, in every block of three extra rows
    edge = np.float32(fi.max * 2.0**-3)
    extra = np.tile(np.random.default_rng(1).uniform(-1, 1, 72).astype(np.float32) * edge, (3, 1))
    extra[:, ::32] = [[np.nextafter(edge, np.float32(0))], [edge], [np.nextafter(edge, np.float32(np.inf))]]
    x = np.concatenate([x, extra])
    name = f"{element}/b32/e8m0/rceil"
    for rounding in ("nearest_even", "toward_zero"):
        assert_same_bits(ours(x, name, rounding=rounding), rceil_mx(x, element, 32, rounding), x, f"{name} {rounding}")
    # rceil never clips: the block's amax is within the element range after scaling
    finite = np.isfinite(x).all(axis=1)
    assert (np.abs(ours(x[finite], name)) <= np.abs(x[finite]).max(axis=1, keepdims=True) * 2).all()


# -- NVFP4 and rule amax against their arithmetic -------------------------------


def test_nvfp4_matches_design_formula():
    rng = np.random.default_rng(11)
    x = block_probe_inputs(10, 72, 16, seed=11)
    x = x[np.isfinite(x).all(axis=1) & (np.abs(x).max(axis=1) < 1e30)]  # per-row tensors, below
    for i, row in enumerate(x):
        assert_same_bits(ours(row[None], "nvfp4"), nvfp4_design(row[None]), row, f"nvfp4 row {i}")
    t = (rng.standard_normal((16, 64)) * np.exp2(rng.integers(-30, 30, (16, 1)))).astype(np.float32)
    t[3, 5] = np.nan  # a NaN block is NaN; the tensor scale comes from the finite blocks
    t[7, 40:] = 0.0
    assert_same_bits(ours(t, "nvfp4"), nvfp4_design(t), t, "nvfp4 tensor")
    assert np.isnan(ours(t, "nvfp4")[3, :16]).all() and not np.isnan(ours(t, "nvfp4")[3, 16:]).any()
    assert_same_bits(ours(t[:, :50], "nvfp4"), nvfp4_design(t[:, :50]), t[:, :50], "nvfp4 partial block")
    tt = np.ascontiguousarray(t.T)
    assert_same_bits(ours(tt, "nvfp4", axis=0), nvfp4_design(t).T, tt, "nvfp4 axis=0")
    t2 = t[:, :60]
    assert_same_bits(ours(t2, "e2m1fn/b16x16/e4m3fn/tensor"), nvfp4_design(t2, 16, 16), t2, "nvfp4 16x16")
    assert (ours(np.zeros((2, 32), np.float32), "nvfp4") == 0).all()


def test_nvfp4_tiny_blocks_beside_a_large_one_decode_to_zero():
    t = np.full((1, 48), 1e-6, dtype=np.float32)
    t[0, :16] = 1e4  # S = 2688 / 1e4: tiny blocks' scale underflows e4m3fn to 0 -> the block is 0
    out = ours(t, "nvfp4")
    assert_same_bits(out, nvfp4_design(t), t, "nvfp4 underflowing block scale")
    assert (out[0, 16:] == 0).all()


@pytest.mark.parametrize(
    "name, B, elem, scale",
    [("e2m1fn/b16/e4m3fn", 16, format_info_ocp_e2m1, format_info_ocp_e4m3),
     ("e4m3fn/b32/bf16", 32, format_info_ocp_e4m3, format_info_bfloat16),
     ("e2m1fn/b8/fp32", 8, format_info_ocp_e2m1, format_info_binary32)],
)
def test_amax_rule_matches_formula(name, B, elem, scale):
    x = block_probe_inputs(10, 72, B, seed=13)
    assert_same_bits(ours(x, name), amax_rule(x, B, elem, scale), x, name)


@pytest.mark.parametrize("name, B, C", [("e4m3fn/b128/fp32", 128, 1), ("e4m3fn/b128x128/fp32", 128, 128)])
def test_deepseek_tiles_and_blocks_match_formula(name, B, C):
    """DeepSeek-V3's fine-grained FP8 (precision=fp8_deepseek): 1 x 128 tiles and 128 x 128 blocks, fp32
    scales amax / 448, E4M3 elements, against the numpy reference, with partial tiles at both edges
    (300 x 333: 3 full and one 77-column tile per row, 2 full and one 44-row block down)."""
    x = block_probe_inputs(292, 333, B, seed=29)  # 300 rows
    assert x.shape == (300, 333)
    assert_same_bits(ours(x, name), amax_rule(x, B, format_info_ocp_e4m3, format_info_binary32, C=C), x, name)


# -- inputs of other dtypes and shapes ------------------------------------------------


def test_half_inputs_and_odd_shapes():
    x = torch.randn(3, 5, 40)
    for dtype in (torch.float16, torch.bfloat16):
        xh = x.to(dtype)
        got = quantize(xh, "mxfp8")
        assert got.dtype == dtype and torch.equal(got, quantize(xh.float(), "mxfp8").to(dtype))
    assert quantize(torch.tensor(3.0), "mxfp4").item() == 3.0
    assert quantize(torch.empty(0, 32), "nvfp4").shape == (0, 32)
    y = quantize(x.transpose(0, 2), "mxfp4", axis=0)  # non-contiguous input
    assert torch.equal(y, quantize(x, "mxfp4").transpose(0, 2))


# -- stochastic rounding of the elements ----------------------------------------------------


def test_stochastic_rounding_index_rule():
    """Element (r, k) of the (rows, K) view draws philox(seed, r*K + k): the element cast of x / s with the
    same seed (its element i draws philox(seed, i)), scaled back, gives the same bits."""
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (6, 40)).astype(np.float32)
    x[:, ::32] = 1.0  # every block's amax is 1: s = 2^(0 - 2) for e2m1fn
    x[:, 32] = 1.0
    t = torch.from_numpy(x)
    ref = quantize(t * 4, "e2m1fn", rounding="stochastic", seed=99) / 4
    assert torch.equal(quantize(t, "mxfp4", rounding="stochastic", seed=99), ref)
    tt = t.T.contiguous()  # the block axis moved last is the same (rows, K) view
    assert torch.equal(quantize(tt, "mxfp4", axis=0, rounding="stochastic", seed=99), ref.T)


@pytest.mark.parametrize("name", ["mxfp4", "nvfp4", "mxfp8_e5m2"])
def test_stochastic_rounding_is_reproducible_and_unbiased(name):
    """N identical rows draw N independent roundings per column. Each draw is within one element step
    delta of x (variance <= delta^2 / 4), so the mean over N lies within 5 * delta / (2 sqrt(N)) of x
    except with probability < 1e-6 per column (Chebyshev-free normal bound; 48 columns)."""
    rng = np.random.default_rng(4)
    row = rng.uniform(-1, 1, 48).astype(np.float32)
    row[::16] = np.float32(1.0)  # amax exact power of two: MX clips nothing, NVFP4 scale exact-ish
    N = 4096
    x = torch.from_numpy(np.tile(row, (N, 1)))
    q = quantize(x, name, rounding="stochastic", seed=5)
    assert torch.equal(q, quantize(x, name, rounding="stochastic", seed=5))
    assert not torch.equal(q, quantize(x, name, rounding="stochastic", seed=6))
    lo, hi = q.min(dim=0).values, q.max(dim=0).values
    assert (lo <= x[0]).all() and (x[0] <= hi).all()
    delta = (hi - lo).double()
    assert ((hi - lo) > 0).any()  # some columns do round both ways
    err = (q.double().mean(dim=0) - x[0].double()).abs()
    assert (err <= 5 * delta / (2 * math.sqrt(N)) + 1e-12).all(), err.max()
    nearest = quantize(x[:1], name)[0]
    assert ((q == nearest) | (q == torch.where(nearest == lo, hi, lo))).all()


# -- the torch.compile'd copy used for large CPU tensors ----------------------------------


@pytest.mark.slow
def test_compiled_twin_is_bit_identical_to_eager(monkeypatch):
    x = torch.from_numpy(np.tile(block_probe_inputs(64, 96, 32, seed=17), (4, 1)))  # 72*4 x 96: above the size
    for name, axis in (("mxfp8", -1), ("mxfp4", -1), ("nvfp4", -1), ("e4m3fn/b32/e8m0/rceil", -1),
                       ("e2m1fn/b16/e4m3fn", -1), ("mxfp4", 0), ("e2m1fn/b16x16/e4m3fn/tensor", -1)):
        monkeypatch.setenv("PRECISIONLAB_COMPILE", "0")
        eager = quantize(x, name, axis=axis)
        monkeypatch.setenv("PRECISIONLAB_COMPILE", "1")
        compiled = quantize(x, name, axis=axis)
        assert_same_bits(compiled.numpy(), eager.numpy(), x.numpy(), f"compiled {name} axis={axis}")
    for name in ("mxfp4", "nvfp4"):  # stochastic: the elements go through the compiled element cast
        monkeypatch.setenv("PRECISIONLAB_COMPILE", "0")
        eager = quantize(x, name, rounding="stochastic", seed=11)
        monkeypatch.setenv("PRECISIONLAB_COMPILE", "1")
        compiled = quantize(x, name, rounding="stochastic", seed=11)
        assert_same_bits(compiled.numpy(), eager.numpy(), x.numpy(), f"compiled {name} stochastic")


@pytest.mark.parametrize("name", ["mxfp8", "mxfp4", "nvfp4", "e4m3fn/b32/e8m0/rceil", "e2m1fn/b16/bf16"])
@pytest.mark.parametrize("compile_", ["0", "1"])
@pytest.mark.parametrize("rounding", ["nearest_even", "stochastic"])
@pytest.mark.parametrize("rows", [250, 256])
def test_blocks_down_the_columns_equal_the_transposed_cast(name, compile_, rounding, rows, monkeypatch):
    """A 2-D tensor cast along axis 0 runs as B x 1 blocks of the untransposed tensor (no copies):
    the same bits as casting its contiguous transpose along the last axis, stochastic draws
    included (they keep the transpose's index), with and without a partial last block."""
    monkeypatch.setenv("PRECISIONLAB_COMPILE", compile_)
    x = torch.from_numpy(np.tile(block_probe_inputs(64, 96, 32, seed=23), (2, 3)))[:, :rows].contiguous()  # 144 x rows
    x = x.T.contiguous()[:, :140].contiguous()  # rows x 140: blocks run down the rows
    want = quantize(x.T.contiguous(), name, rounding=rounding, seed=3).T
    got = quantize(x, name, axis=0, rounding=rounding, seed=3)
    assert_same_bits(got.numpy(), want.numpy(), x.numpy(), f"{name} axis 0 {rounding}")


def test_stochastic_blocks_with_partial_tails_follow_the_index_rule():
    """Stochastic rounding with partial blocks (the multi-region path) draws element (r, k) from
    philox(seed, r * K + k) like a whole-block tensor: per-block scales are powers of two here."""
    gen = torch.Generator().manual_seed(5)
    t = (torch.rand(7, 45, generator=gen) * 4 + 2) * torch.where(torch.rand(7, 45, generator=gen) < 0.5, -1.0, 1.0)
    t[:, 0], t[:, 32] = 6.0, 6.0  # every block's amax 6 (e2m1fn's max): scale 2^0 in each
    ref = quantize(t, "e2m1fn", rounding="stochastic", seed=7)
    assert torch.equal(quantize(t, "mxfp4", rounding="stochastic", seed=7), ref)
