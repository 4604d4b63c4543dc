"""DALL-E mini (Dayma et al. 2021): DALL-E's task as an encoder-decoder (BART-style) over a VQ
tokenizer's image ids.

Where DALL-E (:mod:`clipforge.generation.dalle`) reads caption and image as one causal stream and
also models the caption, DALL-E mini

- encodes the caption with a *bidirectional* transformer (every word sees every other; pads masked);
- decodes the image ids with a causal transformer that cross-attends to the caption's encoding at
  every layer, starting from a start-of-image id;
- is trained on the image ids' cross-entropy only (the caption is given, never predicted).

The decoder alternates the library's self-attention and cross-attention blocks (as CoCa's text
decoder does, :mod:`clipforge.models.coca`). Sampling is the same as DALL-E's (temperature / top-k /
top-p, key/value cache; the caption's cross-attention keys and values are computed once).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.generation.token_generator import TokenGenerator, TokenTransformerConfig, token_sampling
from clipforge.models.generation import KVCache, generate
from clipforge.models.transformer import ResidualBlock, Transformer, init_blocks


@dataclass(frozen=True)
class DALLEMiniConfig(TokenTransformerConfig):
    tokenizer_arch: str = "vqvae"
    encoder_layers: int = 2
    decoder_layers: int = 4

    def __post_init__(self) -> None:
        self.check("dalle-mini", ("encoder_layers", "decoder_layers"))


class DALLEMini(TokenGenerator):
    """Saved as arch ``dalle_mini``."""

    arch = "dalle_mini"

    def __init__(self, config: DALLEMiniConfig) -> None:
        super().__init__(config.tokenizer_arch, config.tokenizer_config)
        self.config = c = config
        g, k = self.grid, self.codes
        self.text_embed = nn.Embedding(c.vocab_size + 1, c.width)
        self.text_pos = nn.Embedding(c.text_length, c.width)
        self.encoder = Transformer(c.width, c.encoder_layers, c.heads)
        self.ln_encoder = nn.LayerNorm(c.width)
        self.image_embed = nn.Embedding(k + 1, c.width)  # id k: start of image
        self.image_pos = nn.Embedding(g * g, c.width)
        self.self_blocks = nn.ModuleList(ResidualBlock(c.width, c.heads, 4.0, "gelu")
                                         for _ in range(c.decoder_layers))
        self.cross_blocks = nn.ModuleList(ResidualBlock(c.width, c.heads, 4.0, "gelu", cross=True)
                                          for _ in range(c.decoder_layers))
        self.ln_final = nn.LayerNorm(c.width)
        self.image_head = nn.Linear(c.width, k)
        self.encoder.init_weights()
        init_blocks(self.self_blocks, c.width)
        init_blocks(self.cross_blocks, c.width)
        for emb in (self.text_embed, self.text_pos, self.image_embed, self.image_pos):
            nn.init.normal_(emb.weight, std=0.02)
        nn.init.normal_(self.image_head.weight, std=c.width ** -0.5)
        nn.init.zeros_(self.image_head.bias)

    def encode_text(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The caption's encoding [B, L, W] and its key mask [B, 1, 1, L] (pads hidden)."""
        keys = (text != self.config.vocab_size)[:, None, None, :]
        x = self.text_embed(text) + self.text_pos(torch.arange(text.shape[1], device=text.device))
        return self.ln_encoder(self.encoder(x, mask=keys)), keys

    def decode(self, x: torch.Tensor, memory: torch.Tensor, keys: torch.Tensor,
               cache: KVCache | None = None) -> torch.Tensor:
        """Causal self-attention over the image ids so far, cross-attention to the caption (pads hidden)."""
        for i, (self_block, cross_block) in enumerate(zip(self.self_blocks, self.cross_blocks)):
            x = self_block(x, causal=True, cache=cache, name=f"dec.{i}")
            x = cross_block(x, mask=keys, context=memory, cache=cache, name=f"cross.{i}")
        return self.ln_final(x)

    def _embed_image(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        return self.image_embed(tokens) + self.image_pos(torch.arange(start, start + tokens.shape[1],
                                                                       device=tokens.device))

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``image_logits`` [B, g^2, K] for text ids [B, L] and image ids [B, g^2]."""
        memory, keys = self.encode_text(text)
        start = torch.full((len(image), 1), self.codes, dtype=torch.long, device=image.device)
        x = self._embed_image(torch.cat([start, image[:, :-1]], 1), 0)
        return {"image_logits": self.image_head(self.decode(x, memory, keys))}

    def loss(self, text: torch.Tensor, image: torch.Tensor) -> dict[str, torch.Tensor]:
        image_ce = F.cross_entropy(self(text, image)["image_logits"].flatten(0, 1).float(), image.flatten())
        return {"loss": image_ce, "image_ce": image_ce.detach()}

    @torch.no_grad()
    def sample_tokens(self, text: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                      generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
        """Image ids [B, g^2] for text ids [B, L], one token at a time (temperature 0: greedy)."""
        memory, keys = self.encode_text(text)

        def step(ids: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
            start = cache.length if cache is not None else 0
            h = self.decode(self._embed_image(ids, start), memory, keys, cache)
            if cache is not None:
                cache.length += ids.shape[1]
            return self.image_head(h[:, -1])

        start = torch.full((len(text), 1), self.codes, dtype=torch.long, device=text.device)
        out = generate(step, start, eos=-1, config=token_sampling(self.grid ** 2, temperature, top_k, top_p),
                       use_cache=use_cache, generator=generator)
        return out[:, 1:]
