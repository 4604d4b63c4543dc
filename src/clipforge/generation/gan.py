"""Text-conditional GANs over a CLIP's text embedding: GAN-CLS and GAN-INT (Reed et al. 2016).

The generator G(z, phi(t)) is a DCGAN deconvolution stack (Radford et al. 2016) fed the noise z
and phi(t), the caption's unit CLIP text embedding compressed by a learned projection (Reed: 1024
-> 128, with a leaky ReLU). The matching-aware discriminator D(x, phi(t)) convolves the image down
to 4x4, tiles its own phi(t) over those positions, and scores the pair with a 1x1 then a 4x4
convolution: it learns whether the image is real *and* whether it matches the text. The losses
(:mod:`clipforge.generation.gan_train`) follow the paper's Algorithm 1; the style encoder S(x)
(section 4.4) regresses z from G(z, t), so that G(S(x), t_new) draws a new caption in the pose and
background of x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from clipforge.config import StoredConfig
from clipforge.errors import ConfigError
from clipforge.models.clip_linked import ClipLinked


@dataclass(frozen=True)
class GANConfig(StoredConfig):
    image_size: int = 32
    clip_dim: int = 512
    z_dim: int = 100  # Reed et al.: 100
    text_dim: int = 128  # phi(t)'s width (Reed et al.: 128)
    channels: int = 64  # the generator's last and the discriminator's first width (DCGAN: 64)
    style_encoder: bool = True
    clip_path: str = ""
    clip_fingerprint: str = ""

    def __post_init__(self) -> None:
        n = math.log2(self.image_size / 4) if self.image_size >= 8 else 0
        if n < 1 or n != int(n):
            raise ConfigError(f"image_size={self.image_size}: the GAN draws sides 4 * 2^k (8, 16, 32, 64, ...)")
        for name in ("z_dim", "text_dim", "channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def levels(self) -> int:
        """Doublings from 4x4 to the image side."""
        return int(math.log2(self.image_size // 4))



def _text_projection(clip_dim: int, text_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(clip_dim, text_dim), nn.LeakyReLU(0.2))


class Generator(nn.Module):
    """G(z, phi(t)): [z, phi(t)] -> 4x4 -> transposed convolutions doubling the side -> tanh image."""

    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        c, n = config.channels, config.levels
        self.text = _text_projection(config.clip_dim, config.text_dim)
        top = c * 2 ** (n - 1)
        self.fc = nn.Sequential(nn.Linear(config.z_dim + config.text_dim, top * 16, bias=False),
                                nn.BatchNorm1d(top * 16), nn.ReLU())
        blocks: list[nn.Module] = []
        for i in range(n - 1, 0, -1):
            blocks += [nn.ConvTranspose2d(c * 2 ** i, c * 2 ** (i - 1), 4, 2, 1, bias=False),
                       nn.BatchNorm2d(c * 2 ** (i - 1)), nn.ReLU()]
        blocks += [nn.ConvTranspose2d(c, 3, 4, 2, 1), nn.Tanh()]
        self.blocks = nn.Sequential(*blocks)
        self.top = top

    def forward(self, z: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        h = self.fc(torch.cat([z, self.text(text)], dim=1))
        return self.blocks(h.view(len(z), self.top, 4, 4))


def _down(c: int, n: int) -> nn.Sequential:
    """Strided convolutions from the image to [c * 2^(n-1), 4, 4] (no normalisation on the first)."""
    layers: list[nn.Module] = [nn.Conv2d(3, c, 4, 2, 1), nn.LeakyReLU(0.2)]
    for i in range(1, n):
        layers += [nn.Conv2d(c * 2 ** (i - 1), c * 2 ** i, 4, 2, 1, bias=False), nn.BatchNorm2d(c * 2 ** i),
                   nn.LeakyReLU(0.2)]
    return nn.Sequential(*layers)


class Discriminator(nn.Module):
    """D(x, phi(t)): a logit that the image is real and matches the text (matching-aware)."""

    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        c, n = config.channels, config.levels
        top = c * 2 ** (n - 1)
        self.text = _text_projection(config.clip_dim, config.text_dim)
        self.image = _down(c, n)
        self.joint = nn.Sequential(nn.Conv2d(top + config.text_dim, top, 1, bias=False), nn.BatchNorm2d(top),
                                   nn.LeakyReLU(0.2), nn.Conv2d(top, 1, 4))

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        h = self.image(x)
        t = self.text(text)[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])
        return self.joint(torch.cat([h, t], dim=1)).flatten()


class StyleEncoder(nn.Module):
    """S(x): the noise z that G would need to draw ``x`` (Reed et al. section 4.4)."""

    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        c, n = config.channels, config.levels
        self.image = _down(c, n)
        self.out = nn.Linear(c * 2 ** (n - 1) * 16, config.z_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.image(x).flatten(1))


def dcgan_init(module: nn.Module) -> None:
    """DCGAN's initialisation (Radford et al. 2016, section 4): weights N(0, 0.02), BatchNorm scales
    N(1, 0.02); PyTorch's defaults are larger and leave a fresh generator drawing high-frequency noise."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class TextGAN(ClipLinked):
    """Generator, discriminator and (optionally) style encoder over one frozen CLIP; saved as arch
    ``text_gan``. Sampling uses the generator alone, in eval mode (BatchNorm's running statistics)."""

    arch = "text_gan"
    kind = "generator"

    def __init__(self, config: GANConfig) -> None:
        super().__init__()
        self.config = config
        self.generator = Generator(config)
        self.discriminator = Discriminator(config)
        self.style = StyleEncoder(config) if config.style_encoder else None
        dcgan_init(self)

    def latent_shape(self) -> tuple[int, ...]:
        return (self.config.z_dim,)

    def draw_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ N(0, I), drawn on the CPU (the same numbers on every device)."""
        return torch.randn((n, self.config.z_dim), generator=generator)

    def condition(self, prompts: list[str]) -> torch.Tensor:
        """What :meth:`render` is conditioned on: the prompts' unit CLIP text embeddings."""
        return self.text_features(prompts)

    def render(self, latents: torch.Tensor, text_features: torch.Tensor, **_: Any) -> torch.Tensor:
        """G(z, t) in [-1, 1], differentiable in ``latents`` (for latent search); one text row is
        shared by every latent."""
        device = next(self.parameters()).device
        self.generator.eval()
        if len(text_features) == 1:
            text_features = text_features.expand(len(latents), -1)
        return self.generator(latents.to(device), text_features.to(device))

    @torch.no_grad()
    def sample(self, text_features: torch.Tensor, latents: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Images [N, 3, H, W] in [-1, 1] for text embeddings [N, clip_dim]."""
        z = latents if latents is not None else self.draw_latents(len(text_features), generator)
        return self.render(z, text_features)

    @torch.no_grad()
    def generate(self, prompts: list[str], generator: torch.Generator | None = None,
                 latents: torch.Tensor | None = None, **_: Any) -> dict[str, torch.Tensor]:
        """Images for text ``prompts`` through the attached CLIP, and the prompts' ``text_features``.
        Diffusion's sampling options (steps, guidance, ...) do not apply and are ignored."""
        feats = self.text_features(prompts)
        return {"images": self.sample(feats, latents, generator), "text_features": feats}

    @torch.no_grad()
    def style_transfer(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """G(S(x), t): each image [-1, 1] at the GAN's side redrawn for the prompt at the same index."""
        if self.style is None:
            raise ConfigError("this GAN has no style encoder (trained with gan.style_share=0)")
        if len(images) != len(prompts):
            raise ConfigError(f"{len(images)} image(s) for {len(prompts)} prompt(s)")
        device = next(self.parameters()).device
        self.style.eval()
        z = self.style(images.to(device))
        return self.render(z, self.text_features(prompts))
