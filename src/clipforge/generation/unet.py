"""The denoiser: a UNet (Ronneberger et al. 2015) as DDPM uses it (Ho et al. 2020, appendix B), with
the condition added to the timestep embedding.

Residual blocks (GroupNorm, SiLU, 3x3 convolutions) whose second half is shifted by a projection of
the timestep embedding; self-attention blocks at the lower resolutions; strided-convolution
downsampling, nearest-neighbour upsampling, skip connections concatenated on the way up. The
layout and parameter names are those of diffusers' ``UNet2DModel`` with ``class_embed_type =
"identity"``: a clipforge denoiser's weights are a diffusers UNet's, number for number
(``tests/test_generation.py``), so it exports to a diffusers folder (:mod:`clipforge.generation.diffusers_io`).
The condition (a CLIP embedding, projected by :class:`~clipforge.generation.diffusion.CLIPDiffusion`)
arrives as a vector of the timestep embedding's width, which is what diffusers' identity class
embedding adds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.errors import ConfigError


@dataclass(frozen=True)
class UNetConfig:
    """Channels per resolution (each level halves the side), residual blocks per level, which levels
    attend (by index), GroupNorm groups and attention head width."""

    in_channels: int = 3
    channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention_levels: tuple[int, ...] = (1, 2)
    norm_groups: int = 8
    head_dim: int = 32
    mid_attention: bool = True

    def __post_init__(self) -> None:
        if any(c % self.norm_groups for c in self.channels):
            raise ConfigError(f"unet.channels {self.channels} must all be multiples of unet.norm_groups="
                              f"{self.norm_groups}")
        if any(c % self.head_dim for c in self.channels):
            raise ConfigError(f"unet.channels {self.channels} must all be multiples of unet.head_dim={self.head_dim}")
        if any(not 0 <= i < len(self.channels) for i in self.attention_levels):
            raise ConfigError(f"unet.attention_levels {self.attention_levels} must index unet.channels")

    @property
    def time_dim(self) -> int:
        return 4 * self.channels[0]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def diffusers_config(self, sample_size: int) -> dict[str, Any]:
        """The same network as a diffusers ``UNet2DModel`` config."""
        n = len(self.channels)
        down = ["AttnDownBlock2D" if i in self.attention_levels else "DownBlock2D" for i in range(n)]
        up = ["AttnUpBlock2D" if i in self.attention_levels else "UpBlock2D" for i in reversed(range(n))]
        return {"_class_name": "UNet2DModel", "sample_size": sample_size, "in_channels": self.in_channels,
                "out_channels": self.in_channels, "block_out_channels": list(self.channels),
                "layers_per_block": self.layers_per_block, "down_block_types": down, "up_block_types": up,
                "norm_num_groups": self.norm_groups, "attention_head_dim": self.head_dim,
                "add_attention": self.mid_attention, "class_embed_type": "identity", "act_fn": "silu",
                "time_embedding_type": "positional", "flip_sin_to_cos": True, "freq_shift": 0,
                "resnet_time_scale_shift": "default", "norm_eps": 1e-5, "downsample_padding": 1,
                "mid_block_scale_factor": 1, "center_input_sample": False}


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of timesteps [B] -> [B, dim]: cos then sin (Vaswani et al.; DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.linear_1, self.linear_2 = nn.Linear(in_dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv, + projected embedding, GroupNorm-SiLU-conv, + shortcut."""

    def __init__(self, cin: int, cout: int, time_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-5)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(time_dim, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-5)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.conv_shortcut(x) if self.conv_shortcut is not None else x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the positions of a feature map, with a residual connection."""

    def __init__(self, channels: int, head_dim: int, groups: int) -> None:
        super().__init__()
        self.heads = channels // head_dim
        self.group_norm = nn.GroupNorm(groups, channels, eps=1e-5)
        self.to_q, self.to_k, self.to_v = (nn.Linear(channels, channels) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        h = self.group_norm(x).view(b, c, hgt * wid).transpose(1, 2)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, -1, self.heads, c // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.to_q(h)), heads(self.to_k(h)), heads(self.to_v(h)))
        out = self.to_out[0](out.transpose(1, 2).reshape(b, hgt * wid, c))
        return x + out.transpose(1, 2).view(b, c, hgt, wid)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution: residual blocks (each followed by attention if the level attends), then a
    resampler."""

    def __init__(self, cins: list[int], cout: int, time_dim: int, cfg: UNetConfig, attend: bool,
                 resample: nn.Module | None, name: str) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(c, cout, time_dim, cfg.norm_groups) for c in cins])
        self.attentions = nn.ModuleList([AttentionBlock(cout, cfg.head_dim, cfg.norm_groups) for _ in cins]) \
            if attend else None
        if resample is not None:
            setattr(self, name, nn.ModuleList([resample]))
        self.resample_name = name if resample is not None else None

    def resampler(self) -> nn.Module | None:
        return getattr(self, self.resample_name)[0] if self.resample_name else None


class MidBlock(nn.Module):
    def __init__(self, channels: int, time_dim: int, cfg: UNetConfig) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, time_dim, cfg.norm_groups) for _ in range(2)])
        self.attentions = nn.ModuleList([AttentionBlock(channels, cfg.head_dim, cfg.norm_groups)]) \
            if cfg.mid_attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x, emb)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x, emb)


class UNet(nn.Module):
    """``forward(x, t, cond)``: the predicted noise of ``x`` [B, C, H, W] at timesteps ``t`` [B];
    ``cond`` [B, time_dim] is added to the timestep embedding (zeros: unconditional)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = cfg = config
        ch, td, n = cfg.channels, cfg.time_dim, len(cfg.channels)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(ch[0], td)
        self.down_blocks = nn.ModuleList()
        cout = ch[0]
        for i in range(n):
            cin, cout = cout, ch[i]
            cins = [cin] + [cout] * (cfg.layers_per_block - 1)
            last = i == n - 1
            self.down_blocks.append(Level(cins, cout, td, cfg, i in cfg.attention_levels,
                                          None if last else Downsample(cout), "downsamplers"))
        self.mid_block = MidBlock(ch[-1], td, cfg)
        self.up_blocks = nn.ModuleList()
        rev = list(reversed(ch))
        cout = rev[0]
        for i in range(n):
            prev, cout = cout, rev[i]
            skip_in = rev[min(i + 1, n - 1)]
            cins = [(prev if j == 0 else cout) + (skip_in if j == cfg.layers_per_block else cout)
                    for j in range(cfg.layers_per_block + 1)]
            last = i == n - 1
            self.up_blocks.append(Level(cins, cout, td, cfg, (n - 1 - i) in cfg.attention_levels,
                                        None if last else Upsample(cout), "upsamplers"))
        self.conv_norm_out = nn.GroupNorm(cfg.norm_groups, ch[0], eps=1e-5)
        self.conv_out = nn.Conv2d(ch[0], cfg.in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_embedding(timestep_features(t, self.config.channels[0]).to(x.dtype))
        if cond is not None:
            emb = emb + cond
        h = self.conv_in(x)
        skips = [h]
        for level in self.down_blocks:
            for j, block in enumerate(level.resnets):
                h = block(h, emb)
                if level.attentions is not None:
                    h = level.attentions[j](h)
                skips.append(h)
            if (down := level.resampler()) is not None:
                h = down(h)
                skips.append(h)
        h = self.mid_block(h, emb)
        for level in self.up_blocks:
            for j, block in enumerate(level.resnets):
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
                if level.attentions is not None:
                    h = level.attentions[j](h)
            if (up := level.resampler()) is not None:
                h = up(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))
