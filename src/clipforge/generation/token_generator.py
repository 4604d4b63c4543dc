"""What DALL-E and DALL-E mini share: a frozen image tokenizer held inside the model (built from the
arch and config its own config names, so the folder is complete), a caption BPE of its own, and
``generate``: sample image ids token by token, decode them with the tokenizer.

Sampling options are the library's autoregressive decoding
(:class:`~clipforge.models.generation.GenerationConfig`): temperature (0: greedy), top-k, top-p.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from clipforge.config import StoredConfig
from clipforge.errors import ConfigError
from clipforge.generation.caption_tokens import caption_ids
from clipforge.generation.dvae import DiscreteVAE, DVAEConfig
from clipforge.generation.image_tokenizer import ImageTokenizer
from clipforge.generation.vqvae import VQVAE, VQVAEConfig
from clipforge.models.clip_linked import ClipLinked
from clipforge.models.generation import GenerationConfig


def build_image_tokenizer(arch: str, config: dict[str, Any]) -> ImageTokenizer:
    """The tokenizer an arch name and config dict describe (what a transformer's config names)."""
    if arch == "dvae":
        return DiscreteVAE(DVAEConfig.from_dict(config))
    if arch == "vqvae":
        return VQVAE(VQVAEConfig.from_dict(config))
    raise ConfigError(f"unknown image tokenizer arch {arch!r} (expected dvae or vqvae)")


def token_sampling(n: int, temperature: float, top_k: int, top_p: float) -> GenerationConfig:
    """Decoding options for ``n`` image tokens (no end token; temperature 0 is greedy)."""
    if temperature < 0:
        raise ConfigError(f"temperature must be at least 0 (0: the most likely token), got {temperature}")
    if temperature == 0:
        return GenerationConfig(strategy="greedy", max_len=n)
    return GenerationConfig(strategy="sample", max_len=n, temperature=temperature, top_k=top_k, top_p=top_p)


@dataclass(frozen=True)
class TokenTransformerConfig(StoredConfig):
    """The fields DALL-E's and DALL-E mini's configs share (each adds its layers)."""

    image_size: int = 32
    vocab_size: int = 512  # the caption BPE's ids; one more is the pad
    text_length: int = 24
    width: int = 256
    heads: int = 4
    tokenizer_arch: str = "dvae"
    tokenizer_config: dict[str, Any] = field(default_factory=dict)
    tokenizer_path: str = ""  # where the tokenizer was trained (its weights are part of this model)
    clip_dim: int = 512
    clip_path: str = ""
    clip_fingerprint: str = ""

    def check(self, name: str, counts: tuple[str, ...]) -> None:
        """Refuse a count below 1 or a width the heads do not divide."""
        for key in ("vocab_size", "text_length", "width", "heads", *counts):
            if getattr(self, key) < 1:
                raise ConfigError(f"{name} {key} must be at least 1, got {getattr(self, key)}")
        if self.width % self.heads:
            raise ConfigError(f"{name} width {self.width} must be divisible by heads {self.heads}")



class TokenGenerator(ClipLinked):
    """Base of the token transformers; a subclass defines ``sample_tokens(text_ids, temperature,
    top_k, top_p, generator, use_cache) -> image ids [B, g^2]``."""

    kind = "generator"
    sampling_keys = ("temperature", "top_k", "top_p", "use_cache")

    def __init__(self, tokenizer_arch: str, tokenizer_config: dict[str, Any]) -> None:
        super().__init__()
        self.image_tokenizer: ImageTokenizer = build_image_tokenizer(tokenizer_arch, tokenizer_config)
        self.image_tokenizer.requires_grad_(False)
        self.grid, self.codes = self.image_tokenizer.grid, self.image_tokenizer.codebook_size

    def caption_ids(self, prompts: list[str]) -> torch.Tensor:
        """The prompts' ids under the model's own caption BPE, pads set to its pad id."""
        if self.tokenizer is None:
            raise ConfigError(f"this {self.arch} has no caption tokenizer (tokenizer.json is missing from its folder)")
        return caption_ids(self.tokenizer, prompts)[0].to(next(self.parameters()).device)

    def sample_tokens(self, text: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                      generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def generate(self, prompts: list[str], generator: torch.Generator | None = None, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, use_cache: bool = True, **_: Any) -> dict[str, torch.Tensor]:
        """Images [N, 3, H, W] in [-1, 1] for ``prompts`` and their image ``tokens``. Other generators'
        sampling options (steps, guidance) do not apply and are ignored."""
        self.eval()
        tokens = self.sample_tokens(self.caption_ids(prompts), temperature, top_k, top_p, generator, use_cache)
        images = self.image_tokenizer.decode(tokens.view(-1, self.grid, self.grid)).clamp(-1, 1)
        return {"images": images, "tokens": tokens}
