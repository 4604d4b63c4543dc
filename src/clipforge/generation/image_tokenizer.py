"""What the image tokenizers (:mod:`~clipforge.generation.dvae`, :mod:`~clipforge.generation.vqvae`)
share: an image in [-1, 1] becomes a grid of codebook ids and back, and their codebook usage.

A DALL-E transformer holds its tokenizer as a submodule, built from the tokenizer's arch and
config saved in its own config (:func:`clipforge.generation.token_generator.build_image_tokenizer`),
so its folder is complete.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from clipforge.errors import ConfigError


class ImageTokenizer(nn.Module):
    """Base of the tokenizers: ``encode`` (images -> ids [B, g, g]), ``decode`` and ``loss``."""

    kind = "image tokenizer"
    config: Any

    def __init__(self) -> None:
        super().__init__()
        self.tokenizer: Any = None  # no text side; clipforge.load sets these on every model
        self.preprocess: Any = None

    @property
    def grid(self) -> int:
        return self.config.image_size // 2 ** self.config.downsamples

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """decode(encode(images)): what the transformer's tokens can at best give back."""
        return self.decode(self.encode(images))


def check_sizes(image_size: int, downsamples: int, codebook_size: int) -> None:
    if downsamples < 1 or image_size % 2 ** downsamples:
        raise ConfigError(f"image_size={image_size} must be divisible by 2^downsamples ({2 ** downsamples})")
    if codebook_size < 2:
        raise ConfigError(f"codebook_size must be at least 2, got {codebook_size}")


def codebook_usage(tokens: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Perplexity exp(H) of the ids' frequencies (codebook_size when all are used equally), the
    number of ids used and of dead ones (never used)."""
    counts = torch.bincount(tokens.flatten().long().cpu(), minlength=codebook_size).float()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    used = int((counts > 0).sum())
    return {"perplexity": math.exp(float(entropy)), "used": used, "dead": codebook_size - used,
            "codebook_size": codebook_size}
