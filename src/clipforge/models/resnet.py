"""The modified ResNet image tower of the CLIP paper (Radford et al. 2021, section 2.4).

Differences from a torchvision ResNet: a stem of three 3x3 convolutions with an average pool in
place of the max pool; anti-aliased strided blocks (an average pool before the stride instead of
a strided convolution, after Zhang 2019); and attention pooling over the final feature map in
place of global average pooling.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from clipforge.models.config import ResNetConfig


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> (avg pool when strided) -> 1x1 with 4x channel expansion."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride > 1 or inplanes != planes * self.expansion:
            # The key "-1" keeps OpenAI's state-dict names (downsample.0 is the conv).
            self.downsample = nn.Sequential(
                OrderedDict(
                    [
                        ("-1", nn.AvgPool2d(stride)),
                        ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, bias=False)),
                        ("1", nn.BatchNorm2d(planes * self.expansion)),
                    ]
                )
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        return self.act3(out + identity)


class AttentionPool2d(nn.Module):
    """Attention pooling: the mean of the feature map is the query over all positions plus the
    mean itself, each with a learned positional embedding (QKV-style multi-head attention).

    Args:
        spatial: side of the input feature map.
        width: channels of the feature map.
        heads: attention heads.
        output_dim: width after the output projection.
    """

    def __init__(self, spatial: int, width: int, heads: int, output_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.positional_embedding = nn.Parameter(torch.randn(spatial * spatial + 1, width) / width**0.5)
        self.k_proj = nn.Linear(width, width)
        self.q_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.c_proj = nn.Linear(width, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, hh, ww = x.shape
        x = x.flatten(2).transpose(1, 2)  # [N, HW, C]
        pe = self.positional_embedding
        if hh * ww != pe.shape[0] - 1:  # another input size (e.g. multi-crop's small views): resample the grid
            side = math.isqrt(pe.shape[0] - 1)
            grid = pe[1:].T.reshape(1, c, side, side)
            grid = F.interpolate(grid, size=(hh, ww), mode="bicubic", align_corners=False)
            pe = torch.cat([pe[:1], grid.reshape(c, hh * ww).T])
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + pe.to(x.dtype)
        h, dh = self.heads, c // self.heads
        q = self.q_proj(x[:, :1]).view(n, 1, h, dh).transpose(1, 2)
        k = self.k_proj(x).view(n, -1, h, dh).transpose(1, 2)
        v = self.v_proj(x).view(n, -1, h, dh).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # [N, h, 1, dh]
        return self.c_proj(out.transpose(1, 2).reshape(n, c))


class ModifiedResNet(nn.Module):
    """CLIP's ResNet image tower.

    Args:
        config: stage depths, width and input size.
        output_dim: width of the joint embedding space.
    """

    def __init__(self, config: ResNetConfig, output_dim: int) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.grad_checkpointing = False
        self.small_stem = config.stem == "small"
        if self.small_stem:
            # One 3x3 convolution at stride 1: small images keep their resolution.
            self.conv1 = nn.Conv2d(3, w, 3, stride=1, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(w)
            self.act1 = nn.ReLU(inplace=True)
        else:
            # Stem: three 3x3 convolutions, then an average pool.
            self.conv1 = nn.Conv2d(3, w // 2, 3, stride=2, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(w // 2)
            self.act1 = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(w // 2, w // 2, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(w // 2)
            self.act2 = nn.ReLU(inplace=True)
            self.conv3 = nn.Conv2d(w // 2, w, 3, padding=1, bias=False)
            self.bn3 = nn.BatchNorm2d(w)
            self.act3 = nn.ReLU(inplace=True)
            self.avgpool = nn.AvgPool2d(2)

        self._inplanes = w
        self.layer1 = self._make_layer(w, config.layers[0])
        self.layer2 = self._make_layer(w * 2, config.layers[1], stride=2)
        self.layer3 = self._make_layer(w * 4, config.layers[2], stride=2)
        self.layer4 = self._make_layer(w * 8, config.layers[3], stride=2)

        embed = w * 32  # the ResNet feature width
        self.attnpool = AttentionPool2d(config.image_size // config.downsampling, embed, config.heads, output_dim)
        self.init_weights()

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def init_weights(self) -> None:
        std = self.attnpool.c_proj.in_features**-0.5
        for proj in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj, self.attnpool.c_proj):
            nn.init.normal_(proj.weight, std=std)
        # Zero-init the last BN of each block so every residual branch starts as identity.
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                nn.init.zeros_(block.bn3.weight)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        if self.small_stem:
            return x
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.act3(self.bn3(self.conv3(x)))
        return self.avgpool(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [N,3,H,W] -> projected features [N, output_dim]."""
        return self.attnpool(self._trunk(images))

    def forward_tokens(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``pooled`` [N, output_dim] as :meth:`forward`, and ``tokens`` [N, H*W, channels]: the last
        stage's feature map as a sequence (row-major), before attention pooling."""
        x = self._trunk(images)
        return {"pooled": self.attnpool(x), "tokens": x.flatten(2).transpose(1, 2)}

    def forward_middle(self, images: torch.Tensor) -> torch.Tensor:
        """The feature map after the second of four stages [N, C, H/8, W/8] (a perceptual loss's
        middle layer, as VGG's relu2_2 or relu3_3 serve in the GAN papers)."""
        x = self.stem(images)
        for stage in (self.layer1, self.layer2):
            x = stage(x)
        return x

    def _trunk(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                if self.grad_checkpointing and torch.is_grad_enabled():
                    x = checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
        return x
