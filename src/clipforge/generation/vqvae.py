"""The VQ-VAE image tokenizer of DALL-E mini's kind (van den Oord et al. 2017; VQGAN, Esser et al.
2021, without its adversarial and perceptual losses): the encoder's vector at each grid position
is replaced by its nearest codebook vector.

- Straight-through: the decoder's gradient is copied to the encoder's output (z_e + sg(e - z_e)).
- Commitment: beta * ||z_e - sg(e)||^2 keeps the encoder near its codes (beta = 0.25, the paper's).
- The codebook is not learned by gradient but as an exponential moving average of the vectors
  assigned to each code (the paper's appendix A.1; decay 0.99, Laplace smoothing of the counts).
- Dead codes are restarted (Dhariwal et al. 2020, Jukebox): a code whose moving count falls below
  ``restart_below`` takes an encoder vector of the batch. Restarts and moving averages are summed
  over processes under torchrun, so every rank keeps the same codebook.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from clipforge.config import StoredConfig
from clipforge.errors import ConfigError
from clipforge.generation.codec_layers import ConvDecoder, ConvEncoder
from clipforge.generation.image_tokenizer import ImageTokenizer, check_sizes


@dataclass(frozen=True)
class VQVAEConfig(StoredConfig):
    image_size: int = 32
    codebook_size: int = 256
    downsamples: int = 2
    channels: int = 64
    code_dim: int = 64
    commitment: float = 0.25
    ema_decay: float = 0.99
    restart_below: float = 1.0  # restart codes whose moving count is below this (0: never)

    def __post_init__(self) -> None:
        check_sizes(self.image_size, self.downsamples, self.codebook_size)
        if not 0 < self.ema_decay < 1:
            raise ConfigError(f"vqvae ema_decay must be in (0, 1), got {self.ema_decay}")



def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation with an EMA codebook (buffers, updated in training mode)."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        k, d = config.codebook_size, config.code_dim
        self.decay, self.restart_below = config.ema_decay, config.restart_below
        self.register_buffer("embed", torch.randn(k, d) * 0.1)
        self.register_buffer("cluster_size", torch.ones(k))
        self.register_buffer("embed_sum", self.embed.clone())
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embed.t() + self.embed.pow(2).sum(1)[None]
        return d.argmin(1)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, ids: torch.Tensor, generator: torch.Generator) -> None:
        k = self.embed.shape[0]
        if not bool(self.initialised):  # the first batch's vectors: codes start where the data is
            pick = torch.randint(len(flat), (k,), generator=generator).to(flat.device)
            self.embed.copy_(_broadcast(flat[pick]))
            self.embed_sum.copy_(self.embed)
            self.initialised.fill_(True)
            return
        onehot = F.one_hot(ids, k).to(flat.dtype)
        counts = _all_reduce(onehot.sum(0))
        sums = _all_reduce(onehot.t() @ flat)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + 1e-5) / (n + k * 1e-5) * n
        self.embed.copy_(self.embed_sum / smoothed[:, None])
        if self.restart_below > 0:
            dead = self.cluster_size < self.restart_below
            if bool(dead.any()):
                pick = torch.randint(len(flat), (k,), generator=generator).to(flat.device)
                fresh = _broadcast(flat[pick])
                self.embed[dead] = fresh[dead]
                self.embed_sum[dead] = fresh[dead]
                self.cluster_size[dead] = 1.0

    def forward(self, z: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """z [B, D, g, g] -> ``quantized`` (straight-through), ``ids`` [B, g, g], ``commitment``."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        ids = self.nearest(flat.detach().float())
        if self.training and generator is not None:
            self._update(flat.detach().float(), ids, generator)
            ids = self.nearest(flat.detach().float())
        e = self.embed[ids].to(z.dtype).view(b, h, w, d).permute(0, 3, 1, 2)
        return {"quantized": z + (e - z).detach(), "ids": ids.view(b, h, w),
                "commitment": F.mse_loss(z, e.detach())}


def _broadcast(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(t, 0)
    return t


class VQVAE(ImageTokenizer):
    """Saved as arch ``vqvae``."""

    arch = "vqvae"

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = ConvEncoder(config.code_dim, config.channels, config.downsamples)
        self.quantizer = VectorQuantizer(config)
        self.decoder = ConvDecoder(config.code_dim, config.channels, config.downsamples)

    def loss(self, images: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """MSE + beta * commitment for images [B, 3, H, W] in [-1, 1]; ``generator`` picks the
        restarted codes (seeded by the step, so resume is exact)."""
        q = self.quantizer(self.encoder(images), generator)
        recon = self.decoder(q["quantized"])
        mse = F.mse_loss(recon, images)
        return {"loss": mse + self.config.commitment * q["commitment"], "mse": mse.detach(),
                "commitment": q["commitment"].detach()}

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        z = self.encoder(images)
        b, d, h, w = z.shape
        return self.quantizer.nearest(z.permute(0, 2, 3, 1).reshape(-1, d).float()).view(b, h, w)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        e = self.quantizer.embed[tokens.long()]  # [B, g, g, D]
        return self.decoder(e.permute(0, 3, 1, 2).to(next(self.decoder.parameters()).dtype))
