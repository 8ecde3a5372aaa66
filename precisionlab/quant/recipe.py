"""The precision recipe: the `precision` config group's schema (`Precision`: its keys and their
defaults, declared once) and the casts it means (`PrecisionConfig`, built from a `precision`
node by `PrecisionConfig.from_cfg`).

Schema. `Precision` and its groups are the `precision` group's structured config
(precisionlab.config registers them, as it registers the model's `ModelConfig`); a default is
the `fp32` preset's value, so a key an older config leaves out means what it always meant.
The roles `x`, `w` and `grad` follow `format` unless set (the interpolation `${.format}` is the
one place that fallback is written).

Recipe. `PrecisionConfig.from_cfg(node)` types `node` (a DictConfig or a dict; keys may be
missing, as in a config stored by an older version) against `Precision`, so every default comes
from the schema, then builds the casts: the role defaults, the six operands after
`operands.<operand>` overrides (precisionlab.quant.operands), the Hadamard transform, the
accumulator, `weight_grad`, the layers kept in another format and the attention casts. A value
the casts cannot take is a ValueError naming its key and what is accepted; so is a combination
that would otherwise be silently reinterpreted:

  - `scaling=delayed` (an operand's, or the shared one an operand takes) on a block format:
    block formats carry their own scales, there is no amax history to apply;
  - `scaling=delayed` reaching a cast attention tensor: the attention casts keep no amax history
    (set `attention.<tensor>.scaling` to none or tensor, or leave attention in fp32).

Reinterpretations that stay, because shipped presets rely on them (the schema's comments say so):
`scaling=tensor` is ignored by block formats (fp8_deepseek's 1x128 / 128x128 blocks inherit
fp8's tensor scaling); `weight_grad` is cast with current (tensor) scaling whenever `scaling`
is not none; kept layers (`keep`, `exclude`) use their format with the default options.

Build it once per consumer and pass it down: `precisionlab.train.checkpoint.build_model` and
`precisionlab.quant.linear.convert_model` take the built recipe.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, fields
from typing import Any, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from precisionlab.numerics.accumulate import ACCUMULATE_ROUNDINGS, Accumulator, parse_accumulator
from precisionlab.numerics.blocks import BlockFormat, parse_format
from precisionlab.numerics.cast import ROUNDING_MODES
from precisionlab.numerics.formats import FloatFormat
from precisionlab.numerics.hadamard import HADAMARD_SIZES
from precisionlab.quant.operands import (
    AMAX_ALGOS,
    ATTENTION_TENSORS,
    GEMMS,
    OPERAND_ROLE,
    OPERANDS,
    OPTIONS,
    ROLES,
    SCALINGS,
    SIGNS,
    AttentionCasts,
    DelayedScaling,
    LayerCasts,
    OperandCast,
)

__all__ = ["Precision", "Operand", "Operands", "Hadamard", "Delayed", "Accumulate", "Keep", "Attention",
           "PrecisionConfig", "KeptLayers"]


# ---- the schema: the `precision` group's keys and defaults (the fp32 preset's values); a field's
# "choices" are what precisionlab.config.validate accepts (as ModelConfig's arch)


@dataclass
class Operand:
    """Overrides of one GEMM operand's cast (precisionlab.quant.operands); null: its role's value."""

    format: Optional[str] = None        # element or block format name
    rounding: Optional[str] = None      # nearest_even | nearest_away | toward_zero | stochastic
    saturate: Optional[bool] = None     # true: overflow clamps to +-max_finite; false: to Inf or NaN as the format has them
    subnormals: Optional[bool] = None   # false: results below min_normal flush to zero
    scaling: Optional[str] = None       # none | tensor | delayed (element formats; see Precision.scaling)
    pow2_scale: Optional[bool] = None   # tensor/delayed scaling with power-of-two scales


@dataclass
class Operands:
    fwd_x: Operand = field(default_factory=Operand)     # forward y = x W^T: x, blocks along in
    fwd_w: Operand = field(default_factory=Operand)     # forward: W, blocks along in
    dgrad_g: Operand = field(default_factory=Operand)   # input gradient dx = g W: g, blocks along out
    dgrad_w: Operand = field(default_factory=Operand)   # input gradient: W, blocks along out
    wgrad_g: Operand = field(default_factory=Operand)   # weight gradient dW = g^T x: g, blocks along tokens
    wgrad_x: Operand = field(default_factory=Operand)   # weight gradient: x, blocks along tokens


@dataclass
class Hadamard:
    size: int = 0                       # 0: off; 16, 32 or 128: block size of the random Hadamard transform
    gemms: List[str] = field(default_factory=lambda: ["wgrad"])  # which GEMMs rotate both operands: fwd, dgrad, wgrad
    signs: str = field(default="fixed", metadata={"choices": SIGNS})  # fixed per layer, or per_call (fresh each call, as Quartet)


@dataclass
class Delayed:
    """Delayed scaling (precision.scaling=delayed), as Transformer Engine's DelayedScaling recipe."""

    history_len: int = 1024             # amaxes kept per operand (TE's amax_history_len); >= 1
    algo: str = field(default="max", metadata={"choices": AMAX_ALGOS})  # scale from the history's max or its most_recent amax
    margin: int = 0                     # scale divided by 2^margin (headroom)


@dataclass
class Accumulate:
    """Limited-precision accumulation of the GEMMs' partial sums (precisionlab.numerics.accumulate)."""

    format: Optional[str] = None        # the accumulator's format, e.g. e8m13 (DeepSeek-V3's ~14 bits), bf16, fp16; null: fp32 GEMMs
    k: int = 1                          # products added between two roundings of the accumulator
    promote: int = 0                    # add it to an fp32 total every N elements of K (DeepSeek: 128); 0: never
    rounding: str = field(default="nearest_even", metadata={"choices": ACCUMULATE_ROUNDINGS})  # how each partial sum rounds into the accumulator
    gemms: List[str] = field(default_factory=lambda: ["fwd", "dgrad", "wgrad"])  # which GEMMs accumulate so


@dataclass
class Keep:
    format: str = "bf16"                # what kept layers use, with the default options (fp32: they stay nn.Linear)
    first: int = 0                      # keep the first k transformer blocks
    last: int = 0                       # keep the last k transformer blocks (NVFP4 recipe)
    match: List[str] = field(default_factory=list)  # and the Linear layers matching these fnmatch patterns


@dataclass
class Attention:
    """Casts of the attention matmuls q.k^T and p.v and of their four backward GEMMs
    (precisionlab.quant.attention); a tensor's null options are the precision group's (format: attention.format)."""

    format: str = "fp32"                # every tensor below unless overridden; fp32: nothing cast (fused SDPA)
    q: Operand = field(default_factory=Operand)     # queries: blocks along D (scores), along queries (dk)
    k: Operand = field(default_factory=Operand)     # keys: blocks along D (scores), along keys (dq)
    p: Operand = field(default_factory=Operand)     # softmax probabilities: blocks along keys (y), along queries (dv)
    v: Operand = field(default_factory=Operand)     # values: blocks along keys (y), along D (dp)
    grad: Operand = field(default_factory=Operand)  # gradients dS of the scores and dy of the output, along each GEMM's reduction axis


@dataclass
class Precision:
    name: str = "fp32"                  # the preset's name, a label
    format: str = "fp32"                # sets all three roles unless they are overridden
    x: str = "${.format}"               # forward activation input of each GEMM
    w: str = "${.format}"               # forward weight input
    grad: str = "${.format}"            # output gradient, for both backward GEMMs
    rounding: str = field(default="nearest_even", metadata={"choices": ROUNDING_MODES})  # how every cast rounds (toward_zero: the paper's bit masking)
    saturate: bool = True               # overflow clamps to +-max_finite
    subnormals: bool = True             # false: flush to zero
    scaling: str = field(default="none", metadata={"choices": SCALINGS})  # none | tensor (current amax) | delayed (amax history); element formats: block formats
                                        # ignore tensor (their blocks carry the scales) and refuse delayed
    pow2_scale: bool = True             # tensor/delayed scaling with power-of-two scales
    delayed: Delayed = field(default_factory=Delayed)   # delayed scaling's history
    exclude: List[str] = field(default_factory=list)  # Linear layers kept in fp32 (fnmatch on module names)
    operands: Operands = field(default_factory=Operands)  # per-operand overrides of the roles
    hadamard: Hadamard = field(default_factory=Hadamard)
    keep: Keep = field(default_factory=Keep)            # layers kept in keep.format
    accumulate: Accumulate = field(default_factory=Accumulate)  # the GEMMs' accumulator
    weight_grad: str = "fp32"           # dW after its GEMM cast to this format, per-tensor (current) scaled unless scaling=none (MS-AMP O1)
    attention: Attention = field(default_factory=Attention)  # the attention matmuls' casts (scaling=delayed refused there)


# ---- the recipe: what a precision node casts


@dataclass(frozen=True)
class KeptLayers:
    """Layers kept in another format: module-name globs and the first / last transformer blocks."""

    cast: OperandCast = OperandCast(None)  # what kept layers use (fmt None: they stay nn.Linear)
    first: int = 0  # the first k blocks
    last: int = 0  # the last k blocks
    match: tuple[str, ...] = ()  # fnmatch patterns on module names

    def keeps(self, name: str, block: int | None, n_blocks: int) -> bool:
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in self.match):
            return True
        return block is not None and (block < self.first or block >= n_blocks - self.last)


@dataclass(frozen=True)
class PrecisionConfig:
    """Every layer's casts: the role defaults, the resolved six operands, and the layers that
    keep another precision (`exclude`: fp32, `keep`: keep.format)."""

    x: OperandCast  # role defaults, as configured (before per-operand overrides)
    w: OperandCast
    grad: OperandCast
    casts: LayerCasts = None  # the six operands after overrides; None: from the roles
    exclude: tuple[str, ...] = ()  # fnmatch patterns on module names, e.g. "lm_head"
    keep: KeptLayers = field(default_factory=KeptLayers)
    attention: AttentionCasts = AttentionCasts()  # every block's attention matmuls; all fp32: SDPA, uncast

    def __post_init__(self) -> None:
        if self.casts is None:
            roles = {"x": self.x, "w": self.w, "grad": self.grad}
            object.__setattr__(self, "casts", LayerCasts(*(roles[OPERAND_ROLE[op]] for op in OPERANDS)))

    @property
    def casts_linears(self) -> bool:
        """Whether a linear layer may be cast: by the six operands, or in the keep format."""
        return not self.casts.is_fp32 or (
            self.keep.cast.fmt is not None and bool(self.keep.first or self.keep.last or self.keep.match))

    @property
    def is_fp32(self) -> bool:
        return not self.casts_linears and self.attention.is_fp32

    def excludes(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.exclude)

    def layer_casts(self, name: str, block: int | None = None, n_blocks: int = 0) -> LayerCasts | None:
        """The casts of the linear layer `name` (in transformer block `block` of `n_blocks`, or
        None outside the blocks); None: the layer stays an fp32 nn.Linear."""
        if self.excludes(name):
            return None
        casts = LayerCasts.uniform(self.keep.cast) if self.keep.keeps(name, block, n_blocks) else self.casts
        return None if casts.is_fp32 else casts

    @classmethod
    def from_cfg(cls, cfg: Any) -> PrecisionConfig:
        """Build from a `precision` config node (DictConfig or dict, keys may be missing: the
        schema's defaults fill them); a bad value is a ValueError naming its key."""
        if isinstance(cfg, PrecisionConfig):
            return cfg
        p = typed(cfg)
        _parse("format", p.format)  # report the key the user typed, not an interpolated role
        shared = dict(  # the options every operand, attention's too, takes unless it overrides them
            rounding=p.rounding, saturate=p.saturate, subnormals=p.subnormals, scaling=p.scaling,
            pow2_scale=p.pow2_scale, delayed=_delayed(p.delayed),
        )
        roles = {r: OperandCast(_parse(r, p[r]), **shared) for r in ROLES}
        operands = [_override(f"operands.{op}", roles[OPERAND_ROLE[op]], p.operands[op]) for op in OPERANDS]
        fwd_x_key = ("operands.fwd_x.format" if p.operands.fwd_x.format is not None
                     else "x" if p.x != p.format else "format")
        _one_d(fwd_x_key, operands[OPERANDS.index("fwd_x")].fmt, "fwd_x casts the activations x (batch, seq, in)")
        for op, cast in zip(OPERANDS, operands):
            _element_only(op, cast, p)
        size, gemms, signs = _hadamard(p.hadamard)
        accumulate, accumulate_gemms = _accumulate(p.accumulate)
        weight_grad = _parse("weight_grad", p.weight_grad)
        if weight_grad is not None:  # current scaling (a delayed one would need a history of its own)
            scaled = "none" if shared["scaling"] == "none" else "tensor"
            weight_grad = OperandCast(weight_grad, scaling=scaled, pow2_scale=shared["pow2_scale"])
        casts = LayerCasts(*operands, hadamard=size, hadamard_gemms=gemms, per_call_signs=signs == "per_call",
                           accumulate=accumulate, accumulate_gemms=accumulate_gemms, weight_grad=weight_grad)
        if size and casts.is_fp32:  # it would change nothing but the run id
            raise ValueError(f"precision.hadamard.size={size} rotates GEMM operands before their casts, but every "
                             "operand is fp32; set a format (precision.format, .x, .w, .grad) or hadamard.size=0")
        return cls(**roles, casts=casts, exclude=tuple(p.exclude), keep=_keep(p.keep),
                   attention=_attention(p.attention, shared))


def typed(cfg: Any) -> DictConfig:
    """A `precision` node (DictConfig or dict) merged onto the schema and resolved; a key the
    schema does not know or a value of the wrong type is a ValueError naming it."""
    try:
        plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
        node = OmegaConf.merge(OmegaConf.structured(Precision), plain)
        OmegaConf.resolve(node)
    except OmegaConfBaseException as err:
        key = f"precision.{err.full_key}" if err.full_key else "precision"
        if err.parent_node is not None and err.key is not None and OmegaConf.get_type(err.parent_node) is not None:
            names = [f.name for f in fields(OmegaConf.get_type(err.parent_node))]
            if err.key not in names:
                raise ValueError(f"{key} is not a config key; {key.rpartition('.')[0]} takes {', '.join(names)}") from None
        raise ValueError(f"{key}: {str(err).splitlines()[0]}") from None
    return node


def _parse(key: str, name: Any) -> FloatFormat | BlockFormat | None:
    try:
        fmt = parse_format(name)
    except ValueError as err:
        raise ValueError(f"precision.{key}: {err}") from None
    return None if fmt == _FP32 else fmt


_FP32 = FloatFormat.parse("fp32")


def _one_d(key: str, fmt: FloatFormat | BlockFormat | None, why: str) -> None:
    """2-D blocks (B x C) need a 2-D tensor: refuse them for an operand cast from a higher-rank one."""
    if isinstance(fmt, BlockFormat) and fmt.block_cols > 1:
        raise ValueError(f"precision.{key}: block format {str(fmt)!r} has 2-D blocks ({fmt.block}x{fmt.block_cols}), "
                         f"but {why}; it takes an element format or 1-D blocks (2-D blocks suit precision.w, "
                         f"precision.grad and the operands fwd_w, dgrad_g, dgrad_w, wgrad_g, wgrad_x)")


def _element_only(operand: str, cast: OperandCast, p: DictConfig) -> None:
    """Refuse delayed scaling on a block format (its blocks carry the scales; no history would be used)."""
    if cast.scaling == "delayed" and isinstance(cast.fmt, BlockFormat):
        key = (f"operands.{operand}.scaling" if p.operands[operand].scaling is not None else "scaling")
        raise ValueError(f"precision.{key}=delayed needs an element format, but operand {operand} casts to block "
                         f"format {str(cast.fmt)!r} (its blocks carry their own scales); use scaling none or tensor, "
                         "or an element format such as e4m3fn")


def _override(key: str, role: OperandCast, settings: DictConfig) -> OperandCast:
    """`role` with the options `settings` (config node `precision.<key>`, e.g. operands.fwd_x) sets."""
    given = {k: settings[k] for k in OPTIONS if settings[k] is not None}
    if "rounding" in given and given["rounding"] not in ROUNDING_MODES:
        raise ValueError(f"precision.{key}.rounding must be one of {', '.join(ROUNDING_MODES)}; "
                         f"got {given['rounding']!r}")
    if "scaling" in given and given["scaling"] not in SCALINGS:
        raise ValueError(f"precision.{key}.scaling must be one of {', '.join(SCALINGS)}; got {given['scaling']!r}")
    changes = {("fmt" if k == "format" else k): v for k, v in given.items()}
    if "fmt" in changes:
        changes["fmt"] = _parse(f"{key}.format", changes["fmt"])
    return OperandCast(**{f.name: changes.get(f.name, getattr(role, f.name)) for f in fields(OperandCast)})


def _attention(a: DictConfig, shared: dict) -> AttentionCasts:
    """precision.attention: its format for every tensor, per-tensor overrides, the shared options
    (delayed scaling is refused where a tensor is cast: the attention casts keep no amax history)."""
    base = OperandCast(_parse("attention.format", a.format), **shared)
    tensors = {t: _override(f"attention.{t}", base, a[t]) for t in ATTENTION_TENSORS}
    for t, cast in tensors.items():
        given = "format" if a[t].format is None else f"{t}.format"
        _one_d(f"attention.{given}", cast.fmt, f"attention's {t} is a 4-D tensor (batch, head, seq, ...)")
        if a[t].scaling == "delayed":
            raise ValueError(f"precision.attention.{t}.scaling must be none or tensor (attention casts keep no amax "
                             "history); got 'delayed'")
        if cast.scaling == "delayed" and cast.fmt is not None:
            raise ValueError(f"precision.scaling=delayed does not reach the attention casts (they keep no amax history), "
                             f"but attention casts {t} to {cast}; set precision.attention.{t}.scaling to none or tensor, "
                             "or precision.attention.format=fp32")
    return AttentionCasts(**tensors)


def _hadamard(h: DictConfig) -> tuple[int, tuple[str, ...], str]:
    if h.size not in (0, *HADAMARD_SIZES):
        raise ValueError(f"precision.hadamard.size must be 0 (off) or one of {', '.join(map(str, HADAMARD_SIZES))}; "
                         f"got {h.size!r}")
    gemms = tuple(h.gemms)
    bad = [g for g in gemms if g not in GEMMS]
    if bad or (h.size and not gemms):
        raise ValueError(f"precision.hadamard.gemms must be a non-empty list of {', '.join(GEMMS)}; got {list(gemms)!r}")
    if h.signs not in SIGNS:
        raise ValueError(f"precision.hadamard.signs must be one of {', '.join(SIGNS)}; got {h.signs!r}")
    return h.size, (tuple(g for g in GEMMS if g in gemms) if h.size else ()), h.signs


def _delayed(d: DictConfig) -> DelayedScaling:
    if d.history_len < 1:
        raise ValueError(f"precision.delayed.history_len must be an integer >= 1 (amaxes kept); got {d.history_len!r}")
    if d.algo not in AMAX_ALGOS:
        raise ValueError(f"precision.delayed.algo must be one of {', '.join(AMAX_ALGOS)}; got {d.algo!r}")
    if not 0 <= d.margin <= 64:
        raise ValueError(f"precision.delayed.margin must be an integer in 0..64 (the scale is divided by 2^margin); "
                         f"got {d.margin!r}")
    return DelayedScaling(d.history_len, d.algo, d.margin)


def _accumulate(a: DictConfig) -> tuple[Accumulator | None, tuple[str, ...]]:
    if a.format is None:
        return None, ()
    gemms = tuple(a.gemms)
    if not gemms or any(g not in GEMMS for g in gemms):
        raise ValueError(f"precision.accumulate.gemms must be a non-empty list of {', '.join(GEMMS)}; got {list(gemms)!r}")
    try:
        fmt = parse_accumulator(a.format)
    except ValueError as err:
        raise ValueError(f"precision.accumulate.format: {err}") from None
    try:
        accumulate = Accumulator(fmt, k=a.k, promote=a.promote, rounding=a.rounding)
    except ValueError as err:  # its message starts with the setting's name
        raise ValueError(f"precision.accumulate.{err}") from None
    return accumulate, tuple(g for g in GEMMS if g in gemms)


def _keep(k: DictConfig) -> KeptLayers:
    for key in ("first", "last"):
        if k[key] < 0:
            raise ValueError(f"precision.keep.{key} must be an integer >= 0 (blocks); got {k[key]!r}")
    fmt = _parse("keep.format", k.format)
    _one_d("keep.format", fmt, "kept layers cast their activations x (batch, seq, in) with it too")
    return KeptLayers(OperandCast(fmt), k.first, k.last, tuple(k.match))
