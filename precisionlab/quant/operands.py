"""What each GEMM operand of a linear layer is cast to: `OperandCast`, `LayerCasts`, `PrecisionConfig`;
and those of the attention matmuls: `AttentionCasts`.

A linear layer runs three GEMMs, each with two operands cast along that GEMM's reduction axis
(README, "Casts in training: six operands"):

  operand    GEMM                       tensor   reduction axis   role   seed slot
  fwd_x      forward  y  = x . W^T      x        in               x      0
  fwd_w      forward                    W        in               w      1
  dgrad_g    input grad  dx = g . W     g        out              grad   2
  dgrad_w    input grad                 W        out              w      4
  wgrad_g    weight grad dW = g^T . x   g        tokens           grad   5
  wgrad_x    weight grad                x        tokens           x      3

Config: the roles (`precision.x`, `w`, `grad` and the shared options) set every operand of
their tensor; `precision.operands.<operand>.<option>` overrides one (null: the role's);
`precision.hadamard` rotates both operands of the chosen GEMMs; `precision.keep` keeps some
layers (globs, first / last transformer blocks) in another format.

Each operand is cast from the high-precision tensor. When an operand pair of one tensor has
the same cast, the cast does not depend on the axis (an element format, or square 2-D blocks
such as NVFP4's 16x16 weight blocks) and neither GEMM rotates it, one cast serves both GEMMs:
with deterministic rounding that gives the same bits as two casts, with stochastic rounding it
is what the old three-role linear did (seed slots 0, 1, 2), so old configs train bit for bit as
before, and it is NVIDIA's "one cast of W for forward and input gradient".

The attention matmuls are two more such GEMMs per transformer block (`AttentionCasts`): their
tensors q, k, p, v and the gradients take one format (`precision.attention.format`) with
per-tensor overrides, and the precision group's shared options.
"""

from __future__ import annotations

import fnmatch
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from precisionlab.numerics.accumulate import Accumulate, accumulate_matmul, parse_accumulator
from precisionlab.numerics.blocks import BlockFormat, parse_format
from precisionlab.numerics.cast import ROUNDING_MODES, amax_scale, block_scaled, quantize, quantize_scaled, tensor_scale
from precisionlab.numerics.formats import FloatFormat
from precisionlab.numerics.hadamard import HADAMARD_SIZES

__all__ = ["OperandCast", "RoleCast", "LayerCasts", "AttentionCasts", "PrecisionConfig", "ROLES", "OPERANDS", "GEMMS",
           "OPERAND_ROLE", "SEED_SLOT", "ATTENTION_TENSORS", "SCALINGS", "AMAX_ALGOS", "SIGNS", "OPTIONS", "Delayed",
           "Accumulate", "CountsCalls", "observing_casts"]

ROLES = ("x", "w", "grad")
GEMMS = ("fwd", "dgrad", "wgrad")
OPERANDS = ("fwd_x", "fwd_w", "dgrad_g", "dgrad_w", "wgrad_g", "wgrad_x")
OPERAND_ROLE = {"fwd_x": "x", "fwd_w": "w", "dgrad_g": "grad", "dgrad_w": "w", "wgrad_g": "grad", "wgrad_x": "x"}
# Philox seed slot of each operand's stochastic rounding; 0-2 are the old roles x, w, grad.
# Slots 6 + GEMMS.index(gemm) seed per-call Hadamard signs.
SEED_SLOT = {"fwd_x": 0, "fwd_w": 1, "dgrad_g": 2, "wgrad_x": 3, "dgrad_w": 4, "wgrad_g": 5}
ATTENTION_TENSORS = ("q", "k", "p", "v", "grad")  # what precision.attention casts (grad: dS and dy)
SCALINGS = ("none", "tensor", "delayed")
AMAX_ALGOS = ("max", "most_recent")
SIGNS = ("fixed", "per_call")
OPTIONS = ("format", "rounding", "saturate", "subnormals", "scaling", "pow2_scale")
_FP32 = FloatFormat.parse("fp32")
_MASK63 = (1 << 63) - 1


def _mix_seed(*parts: int) -> int:
    """SplitMix64-style hash of integers into a 63-bit Philox key."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return h & _MASK63


class CountsCalls:
    """A cast module (QuantLinear, QuantAttend): it counts its forward calls in `calls`, which key its
    stochastic-rounding draws (mixed into their seeds), and keeps the count in its state_dict (its
    `_extra_state` entry), so a resumed run draws what an uninterrupted one would."""

    calls: int = 0

    def get_extra_state(self) -> dict:
        return {"calls": self.calls}

    def set_extra_state(self, state: dict) -> None:
        self.calls = int(state["calls"])


_observer = None  # while set (`observing_casts`), every cast that names its site is shown to it


@contextmanager
def observing_casts(observer):
    """Within the block, every `OperandCast` call that gives a `site` also calls
    observer(site, cast, t, t_q, axis, history) after casting (numerical diagnostics); outside
    it a cast costs nothing extra. The observer must only read: the cast's result is used as is."""
    global _observer
    previous, _observer = _observer, observer
    try:
        yield
    finally:
        _observer = previous


@dataclass(frozen=True)
class Delayed:
    """Delayed scaling's settings (Transformer Engine's `DelayedScaling`): the scale of a cast comes
    from the amaxes of the operand's previous casts, not from the tensor being cast."""

    history_len: int = 1024  # amaxes kept per operand (TE's default amax_history_len)
    algo: str = "max"  # max over the history, or its most_recent entry (TE's amax_compute_algo)
    margin: int = 0  # the scale is divided by 2^margin (headroom)


@dataclass(frozen=True)
class OperandCast:
    """How one GEMM operand is cast; `fmt=None` means fp32 (no cast).

    `scaling="tensor"` is per-tensor current scaling of element formats: before the cast the
    tensor is multiplied by s = 2^floor(log2(max_finite / amax)) and divided by s after it, so
    scaling moves values into range without a rounding of its own (with `pow2_scale=False`:
    FP8 recipes' s = max_finite / amax). `scaling="delayed"` takes amax from the operand's
    history of previous amaxes instead (`delayed`; the caller passes the layer's history), so the
    scale lags the data: a tensor whose amax jumps past the history's saturates (or overflows).
    Block formats carry their own scales and ignore both.
    """

    fmt: FloatFormat | BlockFormat | None
    rounding: str = "nearest_even"
    saturate: bool = True
    subnormals: bool = True
    scaling: str = "none"
    pow2_scale: bool = True
    delayed: Delayed = Delayed()

    @property
    def stochastic(self) -> bool:
        return self.fmt is not None and self.rounding == "stochastic"

    @property
    def axis_free(self) -> bool:
        """Whether the cast is the same along either axis of a 2-D tensor: element formats and
        square 2-D blocks."""
        return not isinstance(self.fmt, BlockFormat) or self.fmt.block == self.fmt.block_cols

    @property
    def is_delayed(self) -> bool:
        return self.scaling == "delayed" and isinstance(self.fmt, FloatFormat)

    def __call__(self, t: torch.Tensor, seed: int = 0, axis: int = -1, history=None, site=None) -> torch.Tensor:
        """The cast of `t`. Delayed scaling needs `history`: (amaxes, scale), this operand's rows of
        its layer's buffers, read and updated in place (see `delayed_cast`). `site` names the cast
        for a cast observer (`observing_casts`), e.g. (layer name, operand)."""
        if self.fmt is None:
            return t
        out = self._cast(t, seed, axis, history)
        if _observer is not None and site is not None:
            _observer(site, self, t, out, axis, history)
        return out

    def _cast(self, t: torch.Tensor, seed: int, axis: int, history) -> torch.Tensor:
        kw = dict(rounding=self.rounding, saturate=self.saturate, subnormals=self.subnormals, seed=seed)
        if isinstance(self.fmt, BlockFormat):
            return quantize(t, self.fmt, axis=axis, **kw)
        if self.scaling == "tensor":
            return quantize_scaled(t, self.fmt, pow2_scale=self.pow2_scale, **kw)
        if self.scaling == "delayed":
            return self.delayed_cast(t, *history, **kw)
        return quantize(t, self.fmt, **kw)

    @property
    def max_finite(self) -> float:
        """The largest finite value of the element format (a block format's elements)."""
        return self.fmt.element.max_finite if isinstance(self.fmt, BlockFormat) else self.fmt.max_finite

    def scaled(self, t: torch.Tensor, axis: int = -1, history=None) -> torch.Tensor:
        """`t` as the element format receives it in the cast just made: times its per-tensor,
        delayed or block scale (t itself without scaling). |scaled| > `max_finite` is an element the
        cast clipped. `history`: the one that cast used (it then holds the scale it applied)."""
        if isinstance(self.fmt, BlockFormat):
            return block_scaled(t, self.fmt, axis=axis)
        if self.scaling == "tensor":
            return t * tensor_scale(t, self.fmt.max_finite, self.pow2_scale)
        if self.scaling == "delayed":
            return t * history[1][0].to(t.dtype)
        return t

    def delayed_cast(self, t: torch.Tensor, amaxes: torch.Tensor, scale: torch.Tensor, **kw) -> torch.Tensor:
        """Transformer Engine's delayed scaling: the scale comes from `amaxes` (fp32 (history_len,),
        most recent first) of the previous casts, max or most recent per `delayed.algo`; where that
        amax is 0 (no history yet) or not finite, the previous `scale` (fp32 (1,), initially 1) stays.
        After the cast, t's amax enters the history. Both buffers are updated in place (no host sync)."""
        amax = amaxes.amax() if self.delayed.algo == "max" else amaxes[0]
        new, usable = amax_scale(amax, self.fmt.max_finite, self.pow2_scale, self.delayed.margin)
        scale.copy_(torch.where(usable, new, scale[0]))
        s = scale[0].to(t.dtype)
        out = quantize(t * s, self.fmt, **kw) / s
        amaxes.copy_(torch.cat([t.detach().abs().amax().float().view(1), amaxes[:-1]]))
        return out

    def __str__(self) -> str:
        return "fp32" if self.fmt is None else str(self.fmt)


RoleCast = OperandCast  # the three-role linear's name


@dataclass(frozen=True)
class LayerCasts:
    """The six operand casts of one linear layer and its Hadamard transform."""

    fwd_x: OperandCast
    fwd_w: OperandCast
    dgrad_g: OperandCast
    dgrad_w: OperandCast
    wgrad_g: OperandCast
    wgrad_x: OperandCast
    hadamard: int = 0  # block size n of the transform; 0: none
    hadamard_gemms: tuple[str, ...] = ()  # of GEMMS
    per_call_signs: bool = False  # fresh signs each call (Quartet) instead of fixed ones per layer
    accumulate: Accumulate | None = None  # the GEMMs' accumulator; None: fp32 GEMMs
    accumulate_gemms: tuple[str, ...] = ()  # of GEMMS: which GEMMs use it
    weight_grad: OperandCast | None = None  # the cast of dW after its GEMM (MS-AMP's FP8 weight gradients)

    @classmethod
    def uniform(cls, cast: OperandCast) -> LayerCasts:
        return cls(*(cast,) * len(OPERANDS))

    def operand(self, name: str) -> OperandCast:
        return getattr(self, name)

    def rotates(self, gemm: str) -> bool:
        return self.hadamard > 0 and gemm in self.hadamard_gemms

    def accumulates(self, gemm: str) -> bool:
        return self.accumulate is not None and gemm in self.accumulate_gemms

    def matmul(self, gemm: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a (M, K) @ b (K, N) for `gemm`, with the layer's accumulator where that GEMM has one."""
        if self.accumulates(gemm):
            return accumulate_matmul(a, b, self.accumulate).to(a.dtype)
        return a @ b

    def _shares(self, a: str, b: str, gemm_a: str, gemm_b: str) -> bool:
        ca, cb = self.operand(a), self.operand(b)
        return ca == cb and ca.axis_free and not (self.rotates(gemm_a) or self.rotates(gemm_b))

    @property
    def share_x(self) -> bool:
        """fwd_x's cast serves wgrad_x."""
        return self._shares("fwd_x", "wgrad_x", "fwd", "wgrad")

    @property
    def share_w(self) -> bool:
        """fwd_w's cast serves dgrad_w."""
        return self._shares("fwd_w", "dgrad_w", "fwd", "dgrad")

    @property
    def share_g(self) -> bool:
        """dgrad_g's cast serves wgrad_g."""
        return self._shares("dgrad_g", "wgrad_g", "dgrad", "wgrad")

    @property
    def delayed_history_len(self) -> int:
        """Amaxes per operand its layer keeps for delayed scaling; 0: no operand uses it."""
        return max((self.operand(op).delayed.history_len for op in OPERANDS if self.operand(op).is_delayed), default=0)

    @property
    def needs_seeds(self) -> bool:
        return any(self.operand(op).stochastic for op in OPERANDS) or (self.hadamard > 0 and self.per_call_signs)

    @property
    def is_fp32(self) -> bool:
        return (all(self.operand(op).fmt is None for op in OPERANDS) and not self.accumulate_gemms
                and self.weight_grad is None)

    def describe(self) -> str:
        names = {op: str(self.operand(op)) for op in OPERANDS}
        if len(set(names.values())) == 1:
            text = next(iter(names.values()))
        else:
            text = ", ".join(f"{op}={name}" for op, name in names.items())
        if self.hadamard:
            text += f", hadamard={self.hadamard} on {'+'.join(self.hadamard_gemms)}"
        if self.accumulate_gemms:
            text += f", {self.accumulate} on {'+'.join(self.accumulate_gemms)}"
        if self.weight_grad is not None:
            text += f", dW in {self.weight_grad}"
        return text


@dataclass(frozen=True)
class AttentionCasts:
    """The casts of one block's attention matmuls, scores S = q . k^T and output y = p . v. Each is a
    GEMM with a linear layer's six operands (q and p in x's place, k and v^T in W's, the gradient dS
    or dy of its output in g's), so each has a `LayerCasts`:

      GEMM     forward (reduction)    input grad (reduction)    weight grad (reduction)
      scores   S  = q . k^T  (D)      dq = dS . k    (keys)     dk = dS^T . q  (queries)
      output   y  = p . v    (keys)   dp = dy . v^T  (D)        dv = p^T . dy  (queries)
    """

    q: OperandCast = OperandCast(None)  # queries (B, H, T, D)
    k: OperandCast = OperandCast(None)  # keys (B, H, T, D)
    p: OperandCast = OperandCast(None)  # softmax probabilities (B, H, T, T)
    v: OperandCast = OperandCast(None)  # values (B, H, T, D)
    grad: OperandCast = OperandCast(None)  # dS (B, H, T, T) and dy (B, H, T, D)

    @property
    def scores(self) -> LayerCasts:
        return LayerCasts(fwd_x=self.q, fwd_w=self.k, dgrad_g=self.grad, dgrad_w=self.k, wgrad_g=self.grad, wgrad_x=self.q)

    @property
    def output(self) -> LayerCasts:
        return LayerCasts(fwd_x=self.p, fwd_w=self.v, dgrad_g=self.grad, dgrad_w=self.v, wgrad_g=self.grad, wgrad_x=self.p)

    @property
    def is_fp32(self) -> bool:
        return all(getattr(self, t).fmt is None for t in ATTENTION_TENSORS)

    def describe(self) -> str:
        names = {t: str(getattr(self, t)) for t in ATTENTION_TENSORS}
        if len(set(names.values())) == 1:
            return next(iter(names.values()))
        return ", ".join(f"{t}={name}" for t, name in names.items())


@dataclass(frozen=True)
class Keep:
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
    keep: Keep = field(default_factory=Keep)
    attention: AttentionCasts = AttentionCasts()  # every block's attention matmuls; all fp32: SDPA, uncast

    def __post_init__(self) -> None:
        if self.casts is None:
            roles = {"x": self.x, "w": self.w, "grad": self.grad}
            object.__setattr__(self, "casts", LayerCasts(*(roles[OPERAND_ROLE[op]] for op in OPERANDS)))

    @property
    def is_fp32(self) -> bool:
        return self.casts.is_fp32 and self.attention.is_fp32 and (
            self.keep.cast.fmt is None or not (self.keep.first or self.keep.last or self.keep.match))

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
        """Build from a `precision` config node (DictConfig or dict, keys may be missing); a bad
        value is a ValueError naming its key. Types and the shared options' allowed values are
        the config schema's (precisionlab.config)."""
        if isinstance(cfg, PrecisionConfig):
            return cfg
        cfg = _plain(cfg)
        if cfg.get("format") is not None:
            _parse("format", cfg["format"])  # report the key the user typed, not an interpolated role
        shared = dict(  # the options every operand, attention's too, takes unless it overrides them
            rounding=cfg.get("rounding", "nearest_even"),
            saturate=bool(cfg.get("saturate", True)),
            subnormals=bool(cfg.get("subnormals", True)),
            scaling=cfg.get("scaling", "none"),
            pow2_scale=bool(cfg.get("pow2_scale", True)),
            delayed=_delayed(cfg.get("delayed") or {}),
        )
        roles = {r: OperandCast(_parse(r, cfg.get(r, cfg.get("format", "fp32"))), **shared) for r in ROLES}
        overrides = cfg.get("operands") or {}
        unknown = sorted(set(overrides) - set(OPERANDS))
        if unknown:
            raise ValueError(f"precision.operands.{unknown[0]} is not an operand; accepted: {', '.join(OPERANDS)}")
        operands = [_override(f"operands.{op}", roles[OPERAND_ROLE[op]], overrides.get(op) or {}) for op in OPERANDS]
        fwd_x_key = ("operands.fwd_x.format" if (overrides.get("fwd_x") or {}).get("format") is not None
                     else "x" if cfg.get("x", cfg.get("format")) != cfg.get("format") else "format")
        _one_d(fwd_x_key, operands[OPERANDS.index("fwd_x")].fmt, "fwd_x casts the activations x (batch, seq, in)")
        size, gemms, signs = _hadamard(cfg.get("hadamard") or {})
        accumulate, accumulate_gemms = _accumulate(cfg.get("accumulate") or {})
        weight_grad = _parse("weight_grad", cfg.get("weight_grad", "fp32"))
        if weight_grad is not None:  # current scaling (a delayed one would need a history of its own)
            scaled = "none" if shared["scaling"] == "none" else "tensor"
            weight_grad = OperandCast(weight_grad, scaling=scaled, pow2_scale=shared["pow2_scale"])
        casts = LayerCasts(*operands, hadamard=size, hadamard_gemms=gemms, per_call_signs=signs == "per_call",
                           accumulate=accumulate, accumulate_gemms=accumulate_gemms, weight_grad=weight_grad)
        if size and casts.is_fp32:  # it would change nothing but the run id
            raise ValueError(f"precision.hadamard.size={size} rotates GEMM operands before their casts, but every "
                             "operand is fp32; set a format (precision.format, .x, .w, .grad) or hadamard.size=0")
        return cls(**roles, casts=casts, exclude=_patterns(cfg.get("exclude")), keep=_keep(cfg.get("keep") or {}),
                   attention=_attention(cfg.get("attention") or {}, shared))


def _plain(cfg: Any) -> dict:
    if isinstance(cfg, dict):
        return dict(cfg)
    from omegaconf import OmegaConf  # only when handed a DictConfig

    return OmegaConf.to_container(cfg, resolve=True)


def _parse(key: str, name: Any) -> FloatFormat | BlockFormat | None:
    try:
        fmt = parse_format(name)
    except ValueError as err:
        raise ValueError(f"precision.{key}: {err}") from None
    return None if fmt == _FP32 else fmt


def _one_d(key: str, fmt: FloatFormat | BlockFormat | None, why: str) -> None:
    """2-D blocks (B x C) need a 2-D tensor: refuse them for an operand cast from a higher-rank one."""
    if isinstance(fmt, BlockFormat) and fmt.block_cols > 1:
        raise ValueError(f"precision.{key}: block format {str(fmt)!r} has 2-D blocks ({fmt.block}x{fmt.block_cols}), "
                         f"but {why}; it takes an element format or 1-D blocks (2-D blocks suit precision.w, "
                         f"precision.grad and the operands fwd_w, dgrad_g, dgrad_w, wgrad_g, wgrad_x)")


def _patterns(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _override(key: str, role: OperandCast, settings: dict) -> OperandCast:
    """`role` with the options `settings` (config node `precision.<key>`, e.g. operands.fwd_x) sets."""
    unknown = sorted(set(settings) - set(OPTIONS))
    if unknown:
        raise ValueError(f"precision.{key}.{unknown[0]} is not a config key; an operand takes {', '.join(OPTIONS)}")
    given = {k: v for k, v in settings.items() if v is not None}
    if "rounding" in given and given["rounding"] not in ROUNDING_MODES:
        raise ValueError(f"precision.{key}.rounding must be one of {', '.join(ROUNDING_MODES)}; "
                         f"got {given['rounding']!r}")
    if "scaling" in given and given["scaling"] not in SCALINGS:
        raise ValueError(f"precision.{key}.scaling must be one of {', '.join(SCALINGS)}; got {given['scaling']!r}")
    changes = {("fmt" if k == "format" else k): v for k, v in given.items()}
    if "fmt" in changes:
        changes["fmt"] = _parse(f"{key}.format", changes["fmt"])
    return OperandCast(**{f.name: changes.get(f.name, getattr(role, f.name)) for f in fields(OperandCast)})


def _attention(cfg: dict, shared: dict) -> AttentionCasts:
    """precision.attention: its format for every tensor, per-tensor overrides, the shared options.
    Delayed scaling becomes current scaling there (an amax history would need state of its own)."""
    unknown = sorted(set(cfg) - {"format", *ATTENTION_TENSORS})
    if unknown:
        raise ValueError(f"precision.attention.{unknown[0]} is not a config key; attention takes format, "
                         f"{', '.join(ATTENTION_TENSORS)}")
    scaling = "tensor" if shared["scaling"] == "delayed" else shared["scaling"]
    base = OperandCast(_parse("attention.format", cfg.get("format", "fp32")), **{**shared, "scaling": scaling})
    tensors = {t: _override(f"attention.{t}", base, cfg.get(t) or {}) for t in ATTENTION_TENSORS}
    for t, cast in tensors.items():
        given = "format" if (cfg.get(t) or {}).get("format") is None else f"{t}.format"
        _one_d(f"attention.{given}", cast.fmt, f"attention's {t} is a 4-D tensor (batch, head, seq, ...)")
        if cast.scaling == "delayed":
            raise ValueError(f"precision.attention.{t}.scaling must be none or tensor (attention casts keep no amax "
                             "history); got 'delayed'")
    return AttentionCasts(**tensors)


def _hadamard(cfg: dict) -> tuple[int, tuple[str, ...], str]:
    size = cfg.get("size", 0)
    if size not in (0, *HADAMARD_SIZES):
        raise ValueError(f"precision.hadamard.size must be 0 (off) or one of {', '.join(map(str, HADAMARD_SIZES))}; "
                         f"got {size!r}")
    gemms = tuple(cfg.get("gemms", ("wgrad",)))
    bad = [g for g in gemms if g not in GEMMS]
    if bad or (size and not gemms):
        raise ValueError(f"precision.hadamard.gemms must be a non-empty list of {', '.join(GEMMS)}; got {list(gemms)!r}")
    signs = cfg.get("signs", "fixed")
    if signs not in SIGNS:
        raise ValueError(f"precision.hadamard.signs must be one of {', '.join(SIGNS)}; got {signs!r}")
    return size, (tuple(g for g in GEMMS if g in gemms) if size else ()), signs


def _delayed(cfg: dict) -> Delayed:
    default = Delayed()
    history_len = cfg.get("history_len", default.history_len)
    algo, margin = cfg.get("algo", default.algo), cfg.get("margin", default.margin)
    if isinstance(history_len, bool) or not isinstance(history_len, int) or history_len < 1:
        raise ValueError(f"precision.delayed.history_len must be an integer >= 1 (amaxes kept); got {history_len!r}")
    if algo not in AMAX_ALGOS:
        raise ValueError(f"precision.delayed.algo must be one of {', '.join(AMAX_ALGOS)}; got {algo!r}")
    if isinstance(margin, bool) or not isinstance(margin, int) or not 0 <= margin <= 64:
        raise ValueError(f"precision.delayed.margin must be an integer in 0..64 (the scale is divided by 2^margin); "
                         f"got {margin!r}")
    return Delayed(history_len, algo, margin)


def _accumulate(cfg: dict) -> tuple[Accumulate | None, tuple[str, ...]]:
    name = cfg.get("format")
    if name is None:
        return None, ()
    gemms = tuple(cfg.get("gemms", GEMMS))
    if not gemms or any(g not in GEMMS for g in gemms):
        raise ValueError(f"precision.accumulate.gemms must be a non-empty list of {', '.join(GEMMS)}; got {list(gemms)!r}")
    try:
        fmt = parse_accumulator(name)
    except ValueError as err:
        raise ValueError(f"precision.accumulate.format: {err}") from None
    settings = {f.name: cfg[f.name] for f in fields(Accumulate) if f.name != "fmt" and f.name in cfg}
    try:
        accumulate = Accumulate(fmt, **settings)
    except ValueError as err:  # its message starts with the setting's name
        raise ValueError(f"precision.accumulate.{err}") from None
    return accumulate, tuple(g for g in GEMMS if g in gemms)


def _keep(cfg: dict) -> Keep:
    for key in ("first", "last"):
        value = cfg.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"precision.keep.{key} must be an integer >= 0 (blocks); got {value!r}")
    fmt = _parse("keep.format", cfg.get("format", "bf16"))
    _one_d("keep.format", fmt, "kept layers cast their activations x (batch, seq, in) with it too")
    return Keep(OperandCast(fmt), cfg.get("first", 0),
                cfg.get("last", 0), _patterns(cfg.get("match")))
