"""The convolutional encoder and decoder of the image tokenizers (dVAE, VQ-VAE): residual blocks
and stride-2 steps between an image and a grid ``2^downsamples`` times smaller."""

from __future__ import annotations

import torch
from torch import nn


class ResBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))), the bottleneck block of the VQ-VAE paper (van den Oord et al. 2017)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ConvEncoder(nn.Module):
    """Images [B, 3, H, W] -> features [B, out_dim, H / 2^k, W / 2^k]."""

    def __init__(self, out_dim: int, channels: int, downsamples: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1)]
        for _ in range(downsamples):
            layers += [ResBlock(channels), nn.ReLU(), nn.Conv2d(channels, channels, 4, 2, 1)]
        layers += [ResBlock(channels), nn.ReLU(), nn.Conv2d(channels, out_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """Features [B, in_dim, h, w] -> images [B, 3, h * 2^k, w * 2^k] (unbounded; the targets are in [-1, 1])."""

    def __init__(self, in_dim: int, channels: int, upsamples: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_dim, channels, 3, padding=1), ResBlock(channels)]
        for _ in range(upsamples):
            layers += [nn.ReLU(), nn.ConvTranspose2d(channels, channels, 4, 2, 1), ResBlock(channels)]
        layers += [nn.ReLU(), nn.Conv2d(channels, 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
