"""Simulated low-precision attention matmuls: an explicit attention path swapped in for SDPA.

`Attend` is the models' attention core (fused SDPA, uncast). When `precision.attention` casts something (`AttentionCasts`, in `precisionlab.quant.operands`),
`convert_attention` swaps every block's `Attend` (fused SDPA, uncast) for a `QuantAttend`, which
writes causal attention out (B batch, H heads, T tokens, D head size):

  S = cast(q) . cast(k)^T / sqrt(D)     (B, H, T, T)   reduction over D
  p = softmax(S, causal mask)           fp32, dropout on p in training (as SDPA's)
  y = cast(p) . cast(v)                 (B, H, T, D)   reduction over keys

Each matmul is a batched GEMM a . b^T with a linear layer's six operand casts (`_QuantMatmulFn`,
`_QuantLinearFn` batched over (B, H) without bias, Hadamard and accumulator): its backward casts
the gradient of its output (dS or dy, in the grad format) and the other operand (in its own
format) along each backward GEMM's reduction axis and multiplies in fp32, so

  dq = dS . k  (over keys)   dk = dS^T . q  (over queries)   dp = dy . v^T  (over D)   dv = p^T . dy  (over queries)

are cast GEMMs; 1/sqrt(D), the mask, softmax and dropout are ordinary fp32 autograd ops between
them. An element cast that serves both GEMMs of a tensor is done once (`LayerCasts.share_*`).

Cost: the path keeps (B, H, T, T) scores and probabilities for backward and casts them, where
SDPA's fused kernel keeps none; so it runs only when something is cast.

A transformers model's attention takes the same path through `precisionlab.quant.hf` (its registered
attention function calls a `QuantAttend` child of each attention module with the model's scaling and
mask).

Stochastic rounding is reproducible as QuantLinear's: each cast's seed mixes the run seed, the
attention's index (its block), its call count (in the state_dict) and a seed slot,
16 + 6 * GEMM + SEED_SLOT (scores GEMM 0, output GEMM 1), apart from the linear layers' 0-8.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from precisionlab.quant.operands import AttentionCasts, CountsCalls, LayerCasts, mix_seed

__all__ = ["Attend", "QuantAttend", "convert_attention"]

_FIRST_SLOT = 16  # seed slots 16-27: the two GEMMs' six operands
_NO_SEEDS = (0,) * 12


class _QuantMatmulFn(torch.autograd.Function):
    """a (..., M, K) . b (..., N, K)^T -> (..., M, N): a in a linear layer's x place, b in its W's,
    the six operands cast by `casts` with `seeds` ordered by SEED_SLOT."""

    @staticmethod
    def forward(ctx, a, b, casts: LayerCasts, seeds: tuple[int, ...], site: tuple[str, str]):
        """site: (module name, GEMM name); each cast names its own as (module, "<gemm>.<operand>")."""
        at = {op: (site[0], f"{site[1]}.{op}") for op in ("fwd_x", "fwd_w", "dgrad_g", "dgrad_w", "wgrad_g", "wgrad_x")}
        a_q = casts.fwd_x(a, seeds[0], axis=-1, site=at["fwd_x"])  # (..., M, K), blocks along K
        b_q = casts.fwd_w(b, seeds[1], axis=-1, site=at["fwd_w"])  # (..., N, K), blocks along K
        # backward recasts a and b from the high-precision tensors unless one cast serves both GEMMs
        ctx.save_for_backward(a_q if casts.share_x else a, b_q if casts.share_w else b)
        ctx.casts, ctx.seeds, ctx.at = casts, seeds, at
        return a_q @ b_q.transpose(-1, -2)  # fp32 products and sums

    @staticmethod
    def backward(ctx, grad_out):  # (..., M, N)
        casts, seeds, at = ctx.casts, ctx.seeds, ctx.at
        a, b = ctx.saved_tensors
        grad_a = grad_b = g_q = None
        if ctx.needs_input_grad[0] or casts.share_g:
            g_q = casts.dgrad_g(grad_out, seeds[2], axis=-1, site=at["dgrad_g"])  # blocks along N
            if ctx.needs_input_grad[0]:
                b_q = b if casts.share_w else casts.dgrad_w(b, seeds[4], axis=-2, site=at["dgrad_w"])  # (..., N, K), blocks along N
                grad_a = g_q @ b_q  # (..., M, N) @ (..., N, K) -> (..., M, K)
        if ctx.needs_input_grad[1]:
            g_w = g_q if casts.share_g else casts.wgrad_g(grad_out, seeds[5], axis=-2, site=at["wgrad_g"])  # blocks along M
            a_q = a if casts.share_x else casts.wgrad_x(a, seeds[3], axis=-2, site=at["wgrad_x"])  # (..., M, K), blocks along M
            grad_b = g_w.transpose(-1, -2) @ a_q  # (..., N, M) @ (..., M, K) -> (..., N, K)
        return grad_a, grad_b, None, None, None


class Attend(nn.Module):
    """Causal softmax attention of q, k, v (B, H, T, D) -> (B, H, T, D), fused (SDPA, uncast): the model's
    attention core (precisionlab.train.model), a module of its own so that `convert_attention` can swap it
    for a cast path, as `convert_model` swaps nn.Linear."""

    def __init__(self, dropout: float):
        super().__init__()
        self.dropout = dropout  # on the attention probabilities, in training mode

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)


class QuantAttend(CountsCalls, Attend):
    """`Attend` on the explicit path, its matmuls cast (see the module docstring)."""

    def __init__(self, attend: Attend, casts: AttentionCasts, index: int = 0, seed: int = 0, name: str = ""):
        super().__init__(attend.dropout)
        self.casts, self.index, self.seed = casts, index, seed
        self.name = name  # the module's name in the model: its cast sites' layer (numerical diagnostics)
        self.calls = 0  # forward calls so far; seeds stochastic rounding

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float | None = None,
                mask: torch.Tensor | None = None, dropout: float | None = None, causal: bool = True) -> torch.Tensor:
        """q (B, H, Tq, D), k and v (B, H, Tk, D) -> (B, H, Tq, D). The defaults are the LM's causal
        attention; a transformers model's attention (`precisionlab.quant.hf`) passes its own: `scaling`
        multiplies the scores (None: they are divided by sqrt(D)); `mask`, boolean (True: attend) or
        additive, (B or 1, H or 1, Tq, Tk), replaces the causal mask, which is applied only when no mask
        is given and `causal` (aligned top left, as SDPA's is_causal); `dropout` (None: the module's)."""
        Tq, Tk, D = q.shape[-2], k.shape[-2], q.shape[-1]
        scores, output = self.casts.scores, self.casts.output
        seeds = _NO_SEEDS
        if scores.needs_seeds or output.needs_seeds:
            seeds = tuple(mix_seed(self.seed, self.index, self.calls, _FIRST_SLOT + slot) for slot in range(12))
        self.calls += 1
        s = _QuantMatmulFn.apply(q, k, scores, seeds[:6], (self.name, "scores"))  # (B, H, Tq, Tk)
        s = s / math.sqrt(D) if scaling is None else s * scaling
        if mask is not None:  # as eager attention adds it: masked scores get the dtype's lowest value
            if mask.dtype == torch.bool:
                mask = torch.where(mask, torch.zeros((), dtype=s.dtype, device=s.device), torch.finfo(s.dtype).min)
            s = s + mask
        elif causal:
            allowed = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril()  # query i sees keys <= i
            s = s.masked_fill(~allowed, float("-inf"))
        p = torch.softmax(s, dim=-1, dtype=torch.float32)
        p = F.dropout(p, self.dropout if dropout is None else dropout, self.training)
        return _QuantMatmulFn.apply(p, v.transpose(-1, -2), output, seeds[6:], (self.name, "output"))  # (B, H, Tq, D)

    def extra_repr(self) -> str:
        return f"dropout={self.dropout}, {self.casts.describe()}"


def convert_attention(model: nn.Module, casts: AttentionCasts, seed: int = 0) -> nn.Module:
    """Swap every `Attend` of `model` for a `QuantAttend` with `casts`, in place; none when nothing
    is cast. `seed`: the run seed. Returns `model`."""
    if casts.is_fp32:
        return model
    names = [name for name, module in model.named_modules() if type(module) is Attend]
    for index, name in enumerate(names):  # index: the block, which seeds its random draws
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, QuantAttend(model.get_submodule(name), casts, index, seed, name))
    return model
