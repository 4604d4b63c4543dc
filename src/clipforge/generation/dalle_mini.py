"""DALL-E mini (Dayma et al. 2021): DALL-E's task as an encoder-decoder (BART-style) over a VQ
tokenizer's image ids.

Where DALL-E (:mod:`clipforge.generation.dalle`) reads caption and image as one causal stream and
also models the caption, DALL-E mini

- encodes the caption with a *bidirectional* transformer (every word sees every other; pads masked);
- decodes the image ids with a causal transformer that cross-attends to the caption's encoding at
  every layer, starting from a start-of-image id;
- is trained on the image ids' cross-entropy only (the caption is given, never predicted).

Sampling is the same as DALL-E's (temperature / top-k / top-p, key/value cache; the caption's
cross-attention keys and values are computed once).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.config import build_config
from clipforge.errors import ConfigError
from clipforge.generation.caption_tokens import caption_ids
from clipforge.generation.image_tokenizer import ImageTokenizer, build_image_tokenizer
from clipforge.generation.token_sampling import check_options, sample_next
from clipforge.generation.token_transformer import Stack, init_weights, new_cache
from clipforge.models.clip_linked import ClipLinked


@dataclass(frozen=True)
class DALLEMiniConfig:
    image_size: int = 32
    vocab_size: int = 512
    text_length: int = 24
    width: int = 256
    encoder_layers: int = 2
    decoder_layers: int = 4
    heads: int = 4
    tokenizer_arch: str = "vqvae"
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    clip_dim: int = 512
    clip_path: str = ""
    clip_fingerprint: str = ""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "text_length", "width", "encoder_layers", "decoder_layers", "heads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"dalle-mini {name} must be at least 1, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ConfigError(f"dalle-mini width {self.width} must be divisible by heads {self.heads}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DALLEMiniConfig:
        return build_config(cls, dict(d), "", strict=True)


class DALLEMini(ClipLinked):
    """Saved as arch ``dalle_mini``."""

    arch = "dalle_mini"
    kind = "generator"
    sampling_keys = ("temperature", "top_k", "top_p", "use_cache")

    def __init__(self, config: DALLEMiniConfig) -> None:
        super().__init__()
        self.config = c = config
        self.image_tokenizer: ImageTokenizer = build_image_tokenizer(c.tokenizer_arch, c.tokenizer_config)
        self.image_tokenizer.requires_grad_(False)
        g, k = self.image_tokenizer.grid, self.image_tokenizer.codebook_size
        self.grid, self.codes = g, k
        self.text_embed = nn.Embedding(c.vocab_size + 1, c.width)
        self.text_pos = nn.Embedding(c.text_length, c.width)
        self.encoder = Stack(c.width, c.encoder_layers, c.heads)
        self.image_embed = nn.Embedding(k + 1, c.width)  # id k: start of image
        self.image_pos = nn.Embedding(g * g, c.width)
        self.decoder = Stack(c.width, c.decoder_layers, c.heads, cross=True)
        self.image_head = nn.Linear(c.width, k)
        for part in (self.text_embed, self.text_pos, self.encoder, self.image_embed, self.image_pos, self.decoder,
                     self.image_head):
            init_weights(part)
        self.register_buffer("_causal", torch.ones(g * g, g * g).tril().bool(), persistent=False)

    def encode_text(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The caption's encoding [B, L, W] and its key mask [B, 1, 1, L] (pads hidden)."""
        keys = (text != self.config.vocab_size)[:, None, None, :]
        x = self.text_embed(text) + self.text_pos(torch.arange(text.shape[1], device=text.device))
        return self.encoder(x, keys), keys

    def _embed_image(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        return self.image_embed(tokens) + self.image_pos(torch.arange(start, start + tokens.shape[1],
                                                                       device=tokens.device))

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``image_logits`` [B, g^2, K] for text ids [B, L] and image ids [B, g^2]."""
        memory, keys = self.encode_text(text)
        start = torch.full((len(image), 1), self.codes, dtype=torch.long, device=image.device)
        x = self._embed_image(torch.cat([start, image[:, :-1]], 1), 0)
        return {"image_logits": self.image_head(self.decoder(x, self._causal, memory, keys))}

    def loss(self, text: torch.Tensor, image: torch.Tensor) -> dict[str, torch.Tensor]:
        image_ce = F.cross_entropy(self(text, image)["image_logits"].flatten(0, 1).float(), image.flatten())
        return {"loss": image_ce, "image_ce": image_ce.detach()}

    def caption_ids(self, prompts: list[str]) -> torch.Tensor:
        if self.tokenizer is None:
            raise ConfigError("this dalle_mini has no caption tokenizer (tokenizer.json is missing from its folder)")
        return caption_ids(self.tokenizer, prompts)[0].to(next(self.parameters()).device)

    @torch.no_grad()
    def sample_tokens(self, text: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                      generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
        check_options(temperature, top_k, top_p)
        memory, keys = self.encode_text(text)
        n, device = self.grid ** 2, text.device
        seq = torch.full((len(text), 1), self.codes, dtype=torch.long, device=device)
        cache = new_cache(self.config.decoder_layers) if use_cache else None
        for a in range(n):
            if use_cache:
                h = self.decoder(self._embed_image(seq[:, -1:], a), self._causal[a:a + 1, :a + 1], memory, keys,
                                 cache=cache)
            else:
                h = self.decoder(self._embed_image(seq, 0), self._causal[:a + 1, :a + 1], memory, keys)
            nxt = sample_next(self.image_head(h[:, -1]), temperature, top_k, top_p, generator).to(device)
            seq = torch.cat([seq, nxt[:, None]], 1)
        return seq[:, 1:]

    @torch.no_grad()
    def generate(self, prompts: list[str], generator: torch.Generator | None = None, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, use_cache: bool = True, **_: Any) -> dict[str, torch.Tensor]:
        """Images [N, 3, H, W] in [-1, 1] for ``prompts`` and their image ``tokens``."""
        self.eval()
        tokens = self.sample_tokens(self.caption_ids(prompts), temperature, top_k, top_p, generator, use_cache)
        images = self.image_tokenizer.decode(tokens.view(-1, self.grid, self.grid)).clamp(-1, 1)
        return {"images": images, "tokens": tokens}
