"""The transformer blocks of DALL-E and DALL-E mini: pre-norm attention with an optional
cross-attention, per-layer boolean masks, and a key/value cache for token-by-token sampling.

A cache is a list of dicts, one per layer: self-attention appends each call's keys and values to
``k`` / ``v``; cross-attention computes ``ck`` / ``cv`` from the encoder's output once. With it, a
new token costs one position's work instead of the whole prefix's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, memory: torch.Tensor | None = None,
                cache: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Self-attention (``memory`` None) or cross-attention over ``memory``; ``mask`` is boolean,
        True where a query may look, [Tq, Tk] or broadcastable to [B, heads, Tq, Tk]."""
        q = self._split(self.q(x))
        if memory is None:
            k, v = (self._split(t) for t in self.kv(x).chunk(2, -1))
            if cache is not None:
                if "k" in cache:
                    k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
                cache["k"], cache["v"] = k, v
        elif cache is not None and "ck" in cache:
            k, v = cache["ck"], cache["cv"]
        else:
            k, v = (self._split(t) for t in self.kv(memory).chunk(2, -1))
            if cache is not None:
                cache["ck"], cache["cv"] = k, v
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).flatten(2))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, cross: bool = False) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_cross = nn.LayerNorm(width) if cross else None
        self.cross = Attention(width, heads) if cross else None
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, memory: torch.Tensor | None = None,
                memory_mask: torch.Tensor | None = None, cache: dict | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask, cache=cache)
        if self.cross is not None:
            x = x + self.cross(self.ln_cross(x), memory_mask, memory=memory, cache=cache)
        return x + self.mlp(self.ln2(x))


class Stack(nn.Module):
    """``layers`` blocks and a final LayerNorm; ``masks`` is one mask for every layer or a list."""

    def __init__(self, width: int, layers: int, heads: int, cross: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, cross) for _ in range(layers))
        self.ln = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, masks: torch.Tensor | list[torch.Tensor] | None,
                memory: torch.Tensor | None = None, memory_mask: torch.Tensor | None = None,
                cache: list[dict] | None = None) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            mask = masks[i] if isinstance(masks, list) else masks
            x = block(x, mask, memory, memory_mask, cache[i] if cache is not None else None)
        return self.ln(x)


def new_cache(layers: int) -> list[dict]:
    return [{} for _ in range(layers)]


def init_weights(module: nn.Module) -> None:
    """GPT-2's initialisation: N(0, 0.02) for linear and embedding weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
