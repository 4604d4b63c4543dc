"""A small CNN that embeds a one-dimensional signal with channels (a log-mel spectrogram: mel bands
as channels, time as the axis) or a two-dimensional one (a depth map), the modality encoders of
:mod:`clipforge.bind`.

Each layer is a convolution, BatchNorm and ReLU, the first with ``stem_stride`` and the others
halving the resolution; the features are pooled by their mean and their maximum over the positions
(the maximum keeps a short event, a spoken word, from being averaged away) and projected to
``embed_dim``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.config import build_config
from clipforge.errors import ConfigError


@dataclass(frozen=True)
class ConvEncoderConfig:
    dims: Literal[1, 2] = 1
    in_channels: int = 40
    widths: list[int] = field(default_factory=lambda: [64, 128, 128, 256])
    kernel: int = 5
    stem_stride: int = 1
    embed_dim: int = 512

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConvEncoderConfig:
        cfg = build_config(cls, dict(d), "", strict=True)
        if cfg.dims not in (1, 2):
            raise ConfigError(f"dims must be 1 or 2, got {cfg.dims}")
        if not cfg.widths:
            raise ConfigError("widths must name at least one layer")
        return cfg


class ConvEncoder(nn.Module):
    """``forward(x)``: x [N, in_channels, T] (dims 1) or [N, in_channels, H, W] (dims 2) -> [N, embed_dim]."""

    def __init__(self, config: ConvEncoderConfig) -> None:
        super().__init__()
        self.config = config
        conv, norm = (nn.Conv1d, nn.BatchNorm1d) if config.dims == 1 else (nn.Conv2d, nn.BatchNorm2d)
        layers: list[nn.Module] = []
        width = config.in_channels
        for i, w in enumerate(config.widths):
            stride = config.stem_stride if i == 0 else 2
            layers += [conv(width, w, config.kernel, stride=stride, padding=config.kernel // 2, bias=False),
                       norm(w), nn.ReLU(inplace=True)]
            width = w
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(2 * width, config.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x).flatten(2)  # [N, C, positions]
        return self.proj(torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.forward(x), dim=-1)
