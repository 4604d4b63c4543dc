"""DALL-E's discrete VAE (Ramesh et al. 2021, section 2.1): images to a grid of K codes with the
Gumbel-softmax relaxation.

The encoder gives logits over K codes at each grid position; in training a relaxed one-hot
y = softmax((logits + g) / tau), g ~ Gumbel(0, 1), picks a mix of codebook vectors for the decoder,
with tau annealed from ``temperature_start`` to ``temperature_end`` over ``anneal_steps`` (cosine;
the paper: 1 -> 1/16). The loss is the negative ELBO with beta on the KL term,

    -log p(x | y) + beta * sum_positions KL(q(y | x) || uniform(K)),

beta raised linearly from 0 over ``kl_warmup_steps`` (the paper: to 6.6 over 5000 updates). The
likelihood is a Gaussian of fixed ``pixel_std`` in place of the paper's logit-Laplace. Tokens are the
logits' argmax; decoding feeds their one-hot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.config import StoredConfig
from clipforge.generation.codec_layers import ConvDecoder, ConvEncoder
from clipforge.generation.image_tokenizer import ImageTokenizer, check_sizes


@dataclass(frozen=True)
class DVAEConfig(StoredConfig):
    image_size: int = 32
    codebook_size: int = 256  # K (the paper: 8192)
    downsamples: int = 2  # the grid is image_size / 2^downsamples (the paper: 256 -> 32)
    channels: int = 64
    code_dim: int = 64
    temperature_start: float = 1.0
    temperature_end: float = 1 / 16
    anneal_steps: int = 1000
    kl_weight: float = 1.0  # beta
    kl_warmup_steps: int = 500
    pixel_std: float = 0.1  # on pixels in [-1, 1]

    def __post_init__(self) -> None:
        check_sizes(self.image_size, self.downsamples, self.codebook_size)



class DiscreteVAE(ImageTokenizer):
    """Saved as arch ``dvae``."""

    arch = "dvae"

    def __init__(self, config: DVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ConvEncoder(config.codebook_size, config.channels, config.downsamples)
        self.codebook = nn.Embedding(config.codebook_size, config.code_dim)
        self.decoder = ConvDecoder(config.code_dim, config.channels, config.downsamples)

    def temperature(self, step: int) -> float:
        c = self.config
        f = min(step / max(c.anneal_steps, 1), 1.0)
        return c.temperature_end + (c.temperature_start - c.temperature_end) * 0.5 * (1 + math.cos(math.pi * f))

    def kl_weight(self, step: int) -> float:
        c = self.config
        return c.kl_weight * min(step / c.kl_warmup_steps, 1.0) if c.kl_warmup_steps else c.kl_weight

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)  # [B, K, g, g]

    def decode_soft(self, y: torch.Tensor) -> torch.Tensor:
        """Decode relaxed one-hots [B, K, g, g]."""
        return self.decoder(torch.einsum("bkhw,kd->bdhw", y, self.codebook.weight))

    def loss(self, images: torch.Tensor, step: int, uniform: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss per pixel of images [B, 3, H, W] in [-1, 1]; ``uniform`` (the logits' shape, in
        (0, 1)) gives the Gumbel noise, so a resumed run draws what the uninterrupted one would."""
        c = self.config
        logits = self.logits(images)
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1 - 1e-7)))
        y = ((logits + gumbel) / self.temperature(step)).softmax(1)
        recon = self.decode_soft(y)
        sq = ((images - recon) ** 2).flatten(1).sum(1)
        log_q = logits.log_softmax(1)
        positions = logits.shape[2] * logits.shape[3]
        kl = (log_q.exp() * log_q).sum(1).flatten(1).sum(1) + positions * math.log(c.codebook_size)
        pixels = images[0].numel()
        nll = sq / (2 * c.pixel_std ** 2)
        loss = (nll + self.kl_weight(step) * kl).mean() / pixels
        return {"loss": loss, "mse": (sq / pixels).mean().detach(), "kl": kl.mean().detach(),
                "temperature": torch.tensor(self.temperature(step))}

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images).argmax(1)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        y = F.one_hot(tokens.long(), self.config.codebook_size).permute(0, 3, 1, 2).to(self.codebook.weight.dtype)
        return self.decode_soft(y)
