"""The default language model of the prefix and text-only captioners: a small GPT-style causal
transformer that clipforge trains on the captions (no pretrained LM can be downloaded here).

It reads *embeddings*, not only token ids, so a captioner can put prefix vectors (a mapped CLIP
embedding) before the caption's tokens; it decodes with the shared
:class:`~clipforge.models.generation.KVCache`. The output head is tied to the token embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from clipforge.config import StoredConfig
from clipforge.errors import ConfigError
from clipforge.models.config import Activation
from clipforge.models.generation import KVCache
from clipforge.models.transformer import Transformer

IGNORE = -100  # label of positions the captioning loss leaves out


def caption_labels(tokens: torch.Tensor, end_id: int) -> torch.Tensor:
    """Next-token labels of caption ``tokens`` [B, L] (start token first): ``tokens[:, 1:]`` with every
    position after a row's first end token set to :data:`IGNORE` (padding, whatever its id: GPT-2
    pads with its end token)."""
    labels = tokens[:, 1:].clone()
    is_end = (labels == end_id).long()
    labels[is_end.cumsum(1) - is_end > 0] = IGNORE
    return labels


def build_lm(config: Any) -> nn.Module:
    """The language model a captioner config names: clipforge's small one or a Hugging Face one."""
    if isinstance(config, LMConfig):
        return CausalLM(config)
    from clipforge.captioning.hf_lm import HFCausalLM

    return HFCausalLM(config)


@dataclass(frozen=True)
class LMConfig(StoredConfig):
    """Attributes: vocabulary, positions (prefix and caption together), width, blocks, heads."""

    type: Literal["small"] = "small"
    vocab_size: int = 1024
    context_length: int = 48
    width: int = 256
    layers: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    activation: Activation = "gelu"

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ConfigError(f"lm.width={self.width} is not a multiple of lm.heads={self.heads}")

    where = "lm."


class CausalLM(nn.Module):
    """Token and position embeddings, a causal transformer, a final norm and the tied output head."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.width))
        self.transformer = Transformer(config.width, config.layers, config.heads, config.mlp_ratio, config.activation)
        self.ln_final = nn.LayerNorm(config.width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.transformer.init_weights()

    @property
    def width(self) -> int:
        return self.config.width

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(ids)

    def forward(self, embeds: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Next-token logits [B, T, vocab] for input embeddings [B, T, width] (after ``cache``'s positions)."""
        return self.forward_hidden(embeds, cache)[0]

    def forward_hidden(self, embeds: torch.Tensor,
                       cache: KVCache | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The logits and the last hidden states [B, T, width] (what the output head reads)."""
        start = cache.length if cache is not None else 0
        if start + embeds.shape[1] > self.config.context_length:
            raise ValueError(f"the language model reads at most {self.config.context_length} positions")
        x = embeds + self.positional_embedding[start : start + embeds.shape[1]].to(embeds.dtype)
        x = self.ln_final(self.transformer(x, causal=True, cache=cache, prefix="lm."))
        if cache is not None:
            cache.length += embeds.shape[1]
        return x @ self.token_embedding.weight.T, x
