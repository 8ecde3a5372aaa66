"""precisionlab.quant.recipe: a `precision` node (keys may be missing) typed against the schema and
built into the six operand casts; the roles' fallback to `format`, per-operand overrides, and the
refusals (unknown keys, delayed scaling on a block format or reaching the attention casts).

Which role each operand takes is written out here from the GEMMs (y = x W^T; dx = g W; dW = g^T x),
not read from the package."""

from __future__ import annotations

import pytest

from precisionlab import parse_format
from precisionlab.quant.recipe import PrecisionConfig, typed

ROLE_OF = {"fwd_x": "x", "wgrad_x": "x", "fwd_w": "w", "dgrad_w": "w", "dgrad_g": "grad", "wgrad_g": "grad"}


def test_an_empty_node_is_fp32_and_casts_no_layer():
    precision = PrecisionConfig.from_cfg({})
    assert precision.is_fp32
    assert all(getattr(precision.casts, op).fmt is None for op in ROLE_OF)
    assert precision.layer_casts("blocks.0.mlp.c_fc", 0, 2) is None


def test_roles_follow_format_unless_set():
    precision = PrecisionConfig.from_cfg({"format": "e4m3fn", "grad": "e5m2"})
    expected = {"x": parse_format("e4m3fn"), "w": parse_format("e4m3fn"), "grad": parse_format("e5m2")}
    for op, role in ROLE_OF.items():
        assert getattr(precision.casts, op).fmt == expected[role], op
    assert not precision.is_fp32


def test_an_operand_override_changes_that_operand_only():
    precision = PrecisionConfig.from_cfg({"format": "e4m3fn", "operands": {"wgrad_g": {"rounding": "stochastic",
                                                                                      "format": "e5m2"}}})
    casts = precision.casts
    assert (casts.wgrad_g.rounding, casts.wgrad_g.fmt) == ("stochastic", parse_format("e5m2"))
    assert casts.dgrad_g.fmt == parse_format("e4m3fn")  # the same role, not overridden
    assert {getattr(casts, op).rounding for op in ROLE_OF if op != "wgrad_g"} == {"nearest_even"}


def test_exclude_and_keep_pick_layers_by_name_and_block():
    precision = PrecisionConfig.from_cfg({"format": "e4m3fn", "exclude": ["lm_*"], "keep": {"format": "bf16", "last": 1}})
    assert precision.layer_casts("lm_head") is None
    assert precision.layer_casts("blocks.0.mlp.c_fc", 0, 2).fwd_x.fmt == parse_format("e4m3fn")
    assert precision.layer_casts("blocks.1.mlp.c_fc", 1, 2).fwd_x.fmt == parse_format("bf16")  # the last block


@pytest.mark.parametrize("node, message", [
    ({"colour": "red"}, r"precision\.colour is not a config key"),
    ({"format": "e4m3fn", "operands": {"fwd_x": {"rounding": "sideways"}}}, r"precision\.operands\.fwd_x\.rounding"),
    ({"format": "mxfp4", "scaling": "delayed"}, r"precision\.scaling=delayed needs an element format"),
    ({"format": "e4m3fn", "operands": {"fwd_w": {"format": "mxfp4", "scaling": "delayed"}}},
     r"precision\.operands\.fwd_w\.scaling=delayed needs an element format"),
    ({"format": "e4m3fn", "scaling": "delayed", "attention": {"format": "e4m3fn"}},
     "does not reach the attention casts"),
    ({"hadamard": {"size": 16}}, r"precision\.hadamard\.size=16 .* every operand is fp32"),
])
def test_refusals_are_one_line_value_errors_naming_the_key(node, message):
    with pytest.raises(ValueError, match=message) as info:
        PrecisionConfig.from_cfg(node)
    assert "\n" not in str(info.value)


def test_typed_fills_the_schema_defaults():
    node = typed({"format": "e5m2"})
    assert (node.x, node.w, node.grad) == ("e5m2", "e5m2", "e5m2")  # the interpolation of the roles
    assert node.scaling == "none" and list(node.exclude) == []
