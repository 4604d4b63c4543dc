"""The pre-norm transformer shared by the towers and the text decoders.

Parameter names follow OpenAI's CLIP and ``nn.MultiheadAttention`` (``attn.in_proj_weight``,
``mlp.c_fc`` ...), so OpenAI and open_clip state dicts map onto these modules one to one. The
attention serves self-attention (optionally causal or with an additive mask), cross-attention to a
context (a decoder reading image tokens, through ``ln_1_kv`` as open_clip's CoCa does) and
incremental decoding with a :class:`~clipforge.models.generation.KVCache`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from clipforge.models.activations import make_activation

if TYPE_CHECKING:
    from clipforge.models.generation import KVCache


class SelfAttention(nn.Module):
    """Multi-head attention computed with ``F.scaled_dot_product_attention``.

    Args:
        width: token width (of the queries, and of the keys and values unless ``context_width``).
        heads: number of heads; ``width`` must be divisible by it.
        context_width: width of a cross-attention context when it differs from ``width``; the
            projections are then stored apart (``q_proj_weight`` ...), as ``nn.MultiheadAttention``
            stores them for a ``kdim``.
    """

    def __init__(self, width: int, heads: int, context_width: int | None = None) -> None:
        super().__init__()
        self.width = width
        self.heads = heads
        self.packed = context_width is None or context_width == width
        if self.packed:  # one packed input projection, as nn.MultiheadAttention stores it
            self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        else:
            self.q_proj_weight = nn.Parameter(torch.empty(width, width))
            self.k_proj_weight = nn.Parameter(torch.empty(width, context_width))
            self.v_proj_weight = nn.Parameter(torch.empty(width, context_width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.width // self.heads).transpose(1, 2)

    def project_context(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [B, H, M, Dh] of a cross-attention context."""
        w, b = self.width, self.in_proj_bias
        wk = self.in_proj_weight[w : 2 * w] if self.packed else self.k_proj_weight
        wv = self.in_proj_weight[2 * w :] if self.packed else self.v_proj_weight
        return self._heads(F.linear(context, wk, b[w : 2 * w])), self._heads(F.linear(context, wv, b[2 * w :]))

    def forward(self, x: torch.Tensor, causal: bool = False, mask: torch.Tensor | None = None,
                context: torch.Tensor | None = None, cache: KVCache | None = None, name: str = "") -> torch.Tensor:
        """x: [batch, tokens, width] -> [batch, tokens, width].

        ``mask``: additive, broadcastable to [batch, heads, tokens, keys]. ``context``: attend to it
        (cross-attention) instead of to ``x``. ``cache``: keys and values of earlier positions (self-
        attention: this call's are appended; cross-attention: the context's are computed once).
        """
        b, n, d = x.shape
        if context is None and self.packed:
            qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
            q, k, v = qkv.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            if cache is not None:
                if cache.length and causal and n > 1:
                    raise ValueError("a cached causal attention takes the prompt at once, then one token per step")
                causal = causal and cache.length == 0  # one new token sees every cached position
                k, v = cache.append(name, k, v)
        else:
            wq = self.in_proj_weight[:d] if self.packed else self.q_proj_weight
            q = self._heads(F.linear(x, wq, self.in_proj_bias[:d]))
            if cache is not None and name in cache.static:
                k, v = cache.static[name]
            else:
                k, v = self.project_context(context if context is not None else x)
                if cache is not None:
                    cache.static[name] = (k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class ResidualBlock(nn.Module):
    """x + attn(ln_1(x)), then x + mlp(ln_2(x)). A cross-attention block (``cross=True``) attends to
    ``ln_1_kv(context)`` instead of to itself (``mask`` then hides context positions, e.g. pads)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, activation: str, cross: bool = False,
                 context_width: int | None = None) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, context_width)
        if cross:
            self.ln_1_kv = nn.LayerNorm(context_width or width)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                c_fc=nn.Linear(width, hidden),
                gelu=make_activation(activation),
                c_proj=nn.Linear(hidden, width),
            )
        )

    def forward(self, x: torch.Tensor, causal: bool = False, mask: torch.Tensor | None = None,
                context: torch.Tensor | None = None, cache: KVCache | None = None, name: str = "") -> torch.Tensor:
        if hasattr(self, "ln_1_kv"):
            cached = cache is not None and name in cache.static
            ctx = None if cached else self.ln_1_kv(context)
            x = x + self.attn(self.ln_1(x), mask=mask, context=ctx if ctx is not None else x, cache=cache,
                              name=name)
        else:
            x = x + self.attn(self.ln_1(x), causal=causal, mask=mask, cache=cache, name=name)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of :class:`ResidualBlock` with optional gradient checkpointing.

    Args:
        width: token width.
        layers: number of blocks.
        heads: attention heads per block.
        mlp_ratio: MLP hidden width as a multiple of ``width``.
        activation: ``"gelu"`` or ``"quick_gelu"``.
    """

    def __init__(
        self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0, activation: str = "gelu"
    ) -> None:
        super().__init__()
        self.width = width
        self.grad_checkpointing = False
        self.resblocks = nn.ModuleList(
            ResidualBlock(width, heads, mlp_ratio, activation) for _ in range(layers)
        )

    def forward(self, x: torch.Tensor, causal: bool = False, mask: torch.Tensor | None = None,
                cache: KVCache | None = None, prefix: str = "") -> torch.Tensor:
        for i, block in enumerate(self.resblocks):
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, causal, mask, use_reentrant=False)
            else:
                x = block(x, causal=causal, mask=mask, cache=cache, name=f"{prefix}{i}")
        return x

    def init_weights(self) -> None:
        """OpenAI's initialisation (std scaled by width and depth)."""
        init_blocks(self.resblocks, self.width)


def init_blocks(blocks, width: int) -> None:
    """OpenAI's initialisation of residual blocks (std scaled by width and depth)."""
    n = len(blocks)
    proj_std = (width**-0.5) * ((2 * n) ** -0.5)
    attn_std = width**-0.5
    fc_std = (2 * width) ** -0.5
    for block in blocks:
        attn = block.attn
        for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
            if hasattr(attn, name):
                nn.init.normal_(getattr(attn, name), std=attn_std)
        nn.init.zeros_(attn.in_proj_bias)
        nn.init.normal_(attn.out_proj.weight, std=proj_std)
        nn.init.zeros_(attn.out_proj.bias)
        nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
        nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
