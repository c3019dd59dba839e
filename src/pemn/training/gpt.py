"""A decoder-only Transformer (GPT) in plain PyTorch, laid out like nanoGPT's ``model.py``.

Registered as ``gpt-<dim>-<depth>`` in :mod:`pemn.training.models`; the vocabulary size is the registry's
``num_classes`` and the context length ``block_size`` (default 64).

- token embedding ``wte`` and position embedding ``wpe`` are ``nn.Embedding``;
- ``depth`` pre-LayerNorm blocks: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``;
- causal self-attention with one fused ``nn.Linear`` ``c_attn`` (dim -> 3 dim, query/key/value) and an
  ``nn.Linear`` output projection ``c_proj``; ``heads = gpt_heads(dim)`` (heads of 32 dimensions: 4 for
  dim 128, as nanoGPT's CPU setting);
- MLP ``c_fc`` (dim -> 4 dim), GELU, ``c_proj`` (4 dim -> dim);
- final LayerNorm ``ln_f`` and an output head **tied to the token embedding**: the logits are
  ``ln_f(x) @ wte.weight.T``. The head has no weight of its own, so it can never drift from the embedding:
  dense training updates one matrix, and when pemn masks ``wte`` the head uses the same masked matrix.

No biases (nanoGPT's ``bias=False``, the shakespeare_char setting) and no dropout. Every weight sits in a
standard ``nn.Linear`` / ``nn.Embedding`` / ``nn.LayerNorm``, so pemn's converter and the pruning baselines
find them. Within a block the four projection shapes differ (3d x d, d x d, 4d x d, d x 4d), so pemn's
``one_layer`` strategy (layers of equal weight shape share one random tensor) means exactly *one random
block shared by every block, each block with its own masks*.

Initialisation (nanoGPT's): every Linear and Embedding weight ~ N(0, 0.02), the residual projections
(``attn.c_proj``, ``mlp.c_proj``) ~ N(0, 0.02 / sqrt(2 depth)); LayerNorm weights 1. It only draws from torch's
global generator, so ``torch.manual_seed`` reproduces it.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["GPT", "Block", "CausalSelfAttention", "gpt_heads"]

#: Width of one attention head in :func:`gpt_heads`.
HEAD_DIM = 32


def gpt_heads(dim: int) -> int:
    """Heads of 32 dimensions (``dim // 32``, at least 1), lowered to the nearest divisor of ``dim``."""
    heads = max(1, dim // HEAD_DIM)
    while dim % heads:
        heads -= 1
    return heads


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention: fused q/k/v ``nn.Linear``, scaled dot product, ``nn.Linear`` output."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"GPT dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.c_attn = nn.Linear(dim, 3 * dim, bias=False)
        self.c_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))


class MLP(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(dim, 4 * dim, bias=False)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    """Pre-LayerNorm Transformer block."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, bias=False)
        self.attn = CausalSelfAttention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim, bias=False)
        self.mlp = MLP(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Character/token-level GPT: ``forward(ids (B, T) int64) -> logits (B, T, vocab_size)``, ``T <= block_size``."""

    def __init__(self, vocab_size: int, dim: int, depth: int, *, block_size: int = 64,
                 heads: int | None = None) -> None:
        super().__init__()
        for label, value in (("vocab_size", vocab_size), ("dim", dim), ("depth", depth),
                             ("block_size", block_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPT {label} must be a positive int, got {value!r}")
        heads = gpt_heads(dim) if heads is None else heads
        self.vocab_size, self.block_size, self.heads = vocab_size, block_size, heads
        self.wte = nn.Embedding(vocab_size, dim)
        self.wpe = nn.Embedding(block_size, dim)
        self.blocks = nn.Sequential(*(Block(dim, heads) for _ in range(depth)))
        self.ln_f = nn.LayerNorm(dim, bias=False)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * depth) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        _, t = idx.shape
        if t > self.block_size:
            raise ValueError(f"sequence of {t} tokens is longer than the GPT's block_size {self.block_size}")
        pos = torch.arange(t, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        x = self.ln_f(self.blocks(x))
        return F.linear(x, self.wte.weight)  # the head tied to the token embedding
