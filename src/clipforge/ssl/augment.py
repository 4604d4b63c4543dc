"""SimCLR's stochastic view augmentation, batched on tensors (kornia; no torchvision).

Chen et al. 2020, appendix A: random resized crop (scale 0.08-1, aspect 3/4-4/3) resized back to
the input size, horizontal flip (p 0.5), colour jitter with probability 0.8 and strength s
(brightness, contrast, saturation 0.8 s, hue 0.2 s), random greyscale (p 0.2) and Gaussian blur
(p 0.5, sigma in 0.1-2, kernel 10% of the image side). Inputs and outputs are float images in
[0, 1], [N, 3, H, W]; every sample gets its own random parameters, reproducible from a seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import kornia.augmentation as K
import torch
from torch import nn


@dataclass
class AugmentConfig:
    """Defaults are SimCLR's (Chen et al. 2020, appendix A)."""

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    jitter_strength: float = 1.0
    greyscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_fraction: float = 0.1

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class ViewAugment(nn.Module):
    """Args: size (output side), config. ``forward(images, seed=None)``."""

    def __init__(self, size: int, config: AugmentConfig | None = None) -> None:
        super().__init__()
        c = config or AugmentConfig()
        s = c.jitter_strength
        kernel = max(3, int(c.blur_kernel_fraction * size) // 2 * 2 + 1)  # odd
        stages: list[nn.Module] = [
            K.RandomResizedCrop((size, size), scale=c.crop_scale, ratio=c.crop_ratio),
            K.RandomHorizontalFlip(p=c.flip_p),
            K.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p=c.jitter_p),
            K.RandomGrayscale(p=c.greyscale_p),
        ]
        if c.blur_p > 0:
            stages.append(K.RandomGaussianBlur((kernel, kernel), c.blur_sigma, p=c.blur_p))
        self.pipeline = nn.Sequential(*stages)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        if seed is None:
            return self.pipeline(images).clamp_(0, 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.pipeline(images).clamp_(0, 1)
