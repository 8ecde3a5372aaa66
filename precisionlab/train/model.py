"""Small decoder-only language models: GPT-2 style and Llama style, one file.

`arch="gpt2"`: LayerNorm, GELU MLP, learned positions, biases (nanoGPT).
`arch="llama"`: RMSNorm, SwiGLU MLP, rotary positions (RoPE), no biases.
`arch="hf"`: a Hugging Face architecture built from `model.hf` (precisionlab.train.hf builds it;
only `vocab_size` and `block_size` of this schema apply to it, the other fields stay at their defaults).

Every GEMM of the model is an `nn.Linear` (attention projections, MLP,
LM head), so `precisionlab.quant.linear.convert_model` can swap them all for
quantized linears. The attention matmuls themselves (q @ k^T, p @ v) run in
fp32 through `scaled_dot_product_attention`, in an `Attend` module
(precisionlab.quant.attention) that convert_model swaps for an explicit cast path when `precision.attention`
casts them (`precisionlab.quant.attention`).

Shapes: B batch, T sequence length, C = n_embd, H = n_head, D = C // H, V vocab.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from precisionlab.quant.attention import Attend

__all__ = ["ModelConfig", "LM", "Attend", "ARCHS"]

ARCHS = ("gpt2", "llama")  # this module's own; "hf" is a Hugging Face architecture (precisionlab.train.hf)
# ModelConfig fields that a Hugging Face model (arch=hf) does not read: its sizes are model.hf's keys
NOT_FOR_HF = ("n_layer", "n_head", "n_embd", "mlp_hidden", "dropout", "bias", "tie_weights", "rope_theta", "norm_eps",
              "qk_norm")


@dataclass
class ModelConfig:
    """The model's hyperparameters, and the `model` config group's schema (precisionlab.config
    registers it and checks the values; the defaults are the `tiny` preset's)."""

    arch: str = field(default="gpt2", metadata={"choices": (*ARCHS, "hf")})  # "gpt2" (LayerNorm, GELU, learned positions), "llama" (RMSNorm, SwiGLU, RoPE) or "hf" (a Hugging Face architecture: model.hf)
    vocab_size: int = 256  # tokens; 256 for byte-level data, 50304 for padded GPT-2 tokens
    block_size: int = 64  # longest sequence the model accepts (size of the position table)
    n_layer: int = 2  # transformer blocks
    n_head: int = 4  # attention heads; must divide n_embd
    n_embd: int = 128  # residual width C
    mlp_hidden: int | None = None  # MLP width; None: 4*C (gpt2), 8/3*C rounded up to 64 (llama)
    dropout: float = 0.0  # dropout on attention and residual branches (0 for stability studies)
    bias: bool | None = None  # biases in Linear layers and norms; None: True for gpt2, False for llama
    tie_weights: bool = True  # LM head shares the token embedding matrix (nanoGPT, the paper's sizes)
    rope_theta: float = 10000.0  # RoPE base frequency (llama only)
    norm_eps: float = 1e-5  # epsilon of LayerNorm / RMSNorm
    qk_norm: bool = False  # normalise each head's queries and keys before q.k^T (QK-LayerNorm: against attention-logit growth)
    hf: Optional[Dict[str, Any]] = None  # arch=hf: the Hugging Face model, `arch` (llama, gpt2, qwen2, olmo2) and HF's own config keys (model=hf)

    # Derived, not written back: the dataclass holds exactly the config's values (it is the schema).

    @property
    def has_bias(self) -> bool:
        return self.arch == "gpt2" if self.bias is None else self.bias

    @property
    def mlp_width(self) -> int:
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        return 4 * self.n_embd if self.arch == "gpt2" else 64 * math.ceil(8 * self.n_embd / 3 / 64)

    def step_bytes(self, batch_size: int, seq_len: int) -> int:
        """A rough lower bound on the memory of one fp32 training step: weights, gradients and
        AdamW's two moments (16 bytes a parameter), plus the fp32 activations kept for backward
        (per token: per layer at least 8 widths C and two MLP widths, then the logits and their
        gradient; fused attention keeps no (T, T) scores). Used to refuse, before it starts, a
        batch that cannot fit, never to plan one that can."""
        C, L, V = self.n_embd, self.n_layer, self.vocab_size
        params = L * (4 * C * C + 3 * C * self.mlp_width) + V * C * (1 if self.tie_weights else 2) + self.block_size * C
        activations = batch_size * seq_len * (L * (8 * C + 2 * self.mlp_width) + 2 * V)
        return 16 * params + 4 * activations


def _rope_tables(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (block_size, D/2) for rotary embeddings."""
    head_dim = cfg.n_embd // cfg.n_head
    inv_freq = cfg.rope_theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(cfg.block_size, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of x (B, H, T, D) by position-dependent angles (T, D/2)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]  # (B, H, T, D/2) each
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (B, H, T, D/2, 2)
    return rotated.flatten(-2)


def _norm(cfg: ModelConfig, width: int | None = None) -> nn.Module:
    """The architecture's norm over `width` features (default: the residual width C)."""
    width = width or cfg.n_embd
    if cfg.arch == "llama":
        return nn.RMSNorm(width, eps=cfg.norm_eps)
    return nn.LayerNorm(width, eps=cfg.norm_eps, bias=cfg.has_bias)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.rope = cfg.n_head, cfg.arch == "llama"
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.has_bias)  # q, k, v in one GEMM
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.has_bias)
        self.attend = Attend(cfg.dropout)  # (B, H, T, D) q, k, v -> (B, H, T, D)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        if cfg.qk_norm:  # one norm over the head dimension D, shared by the heads (Dehghani et al. 2023)
            self.q_norm, self.k_norm = _norm(cfg, cfg.n_embd // cfg.n_head), _norm(cfg, cfg.n_embd // cfg.n_head)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        B, T, C = x.shape
        y = self.attend(*self.heads(self.c_attn(x), rope))  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def heads(self, qkv: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, ...]:
        """Queries, keys and values (B, H, T, D) from the fused projection's output (B, T, 3C):
        split into heads, QK-normalised and rotated as the model is configured."""
        B, T, C3 = qkv.shape
        q, k, v = qkv.split(C3 // 3, dim=2)  # (B, T, C) each
        q, k, v = (t.view(B, T, self.n_head, C3 // 3 // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = _apply_rope(q, *rope), _apply_rope(k, *rope)
        return q, k, v


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu = cfg.arch == "llama"
        # SwiGLU's gate and up projections share one GEMM: (C) -> (2 * hidden)
        self.c_fc = nn.Linear(cfg.n_embd, (2 if self.swiglu else 1) * cfg.mlp_width, bias=cfg.has_bias)
        self.c_proj = nn.Linear(cfg.mlp_width, cfg.n_embd, bias=cfg.has_bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)  # (B, T, hidden) or (B, T, 2 * hidden)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h)
        return self.dropout(self.c_proj(h))  # (B, T, C)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1, self.attn = _norm(cfg), CausalSelfAttention(cfg)
        self.ln_2, self.mlp = _norm(cfg), MLP(cfg)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope)  # pre-norm residual blocks
        return x + self.mlp(self.ln_2(x))


class LM(nn.Module):
    """Decoder-only LM: token ids (B, T) -> logits (B, T, V) and mean cross-entropy."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.arch == "gpt2" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = _norm(cfg)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        if cfg.arch == "llama":
            cos, sin = _rope_tables(cfg)
            self.register_buffer("rope_cos", cos, persistent=False)  # (block_size, D/2)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        """Parameters, counting a tied embedding once."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds model.block_size {self.config.block_size}")
        x = self.wte(idx)  # (B, T, C)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))  # (T, C) broadcast over B
        else:
            rope = (self.rope_cos[:T], self.rope_sin[:T])
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, rope)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss
