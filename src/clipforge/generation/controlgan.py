"""ControlGAN (Li et al. 2019, "Controllable Text-to-Image Generation") at the scale of a CPU.

A multi-stage generator (AttnGAN's, Xu et al. 2018): conditioning augmentation turns the sentence
embedding into c ~ N(mu(s), sigma(s)); stage 0 draws a ``base_size`` image from [z, c]; each later
stage doubles the side after attending to the words. Here the sentence is the caption's unit CLIP
text embedding and the words are the frozen CLIP text tower's per-token outputs.

- **Word-level spatial attention** (AttnGAN): each position of the hidden map h attends over the
  words projected to h's width; the context is a map of the same shape.
- **Word-level channel-wise attention** (ControlGAN, eq. 2-3): the words are projected to the map's
  *spatial* size N; each channel (a vector of N) attends over the words, so a word can drive the
  channels that carry its attribute.
- **Discriminators**, one per stage, each with an unconditional and a sentence-conditional logit;
  the last stage's also has ControlGAN's **word-level discriminator**: each word attends over the
  image regions (the 8x8 feature map), is scored against the region it found, and the scores are
  averaged with a learned word importance; real/wrong-caption pairs teach it to spot a word the
  image does not show.
- The generator is also trained with a **perceptual loss** (mean squared distance between a frozen
  image network's middle features of the real and the generated image; here the conditioning CLIP's
  image tower, since no ImageNet network can be downloaded) and a **text-image cosine loss** (one
  minus the CLIP cosine of the generated image and its caption, standing in for AttnGAN's DAMSM).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.config import StoredConfig
from clipforge.errors import ConfigError
from clipforge.generation.gan import dcgan_init
from clipforge.models.clip_linked import ClipLinked


@dataclass(frozen=True)
class ControlGANConfig(StoredConfig):
    image_size: int = 32  # the last stage's side
    base_size: int = 16  # the first stage's side; each later stage doubles it
    clip_dim: int = 512  # the sentence embedding's width
    word_dim: int = 512  # the CLIP text tower's token width
    z_dim: int = 100
    cond_dim: int = 100  # conditioning augmentation's output (AttnGAN: 100)
    channels: int = 32  # the generator's width at every stage (AttnGAN: 32)
    disc_channels: int = 32  # the discriminators' first width
    clip_path: str = ""
    clip_fingerprint: str = ""

    def __post_init__(self) -> None:
        stages = math.log2(self.image_size / self.base_size)
        if self.base_size < 8 or stages < 0 or stages != int(stages) or math.log2(self.base_size) % 1:
            raise ConfigError(f"image_size={self.image_size}, base_size={self.base_size}: sides must be powers of "
                              "two, base_size at least 8, image_size = base_size * 2^k")

    @property
    def sides(self) -> list[int]:
        """Each stage's image side, first to last."""
        n = int(math.log2(self.image_size // self.base_size)) + 1
        return [self.base_size * 2 ** i for i in range(n)]



def _up(c_in: int, c_out: int) -> nn.Sequential:
    """Nearest-neighbour x2, 3x3 convolution, BatchNorm, GLU (AttnGAN's upsampling block)."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out * 2, 3, 1, 1, bias=False),
                         nn.BatchNorm2d(c_out * 2), nn.GLU(dim=1))


class _Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c * 2, 3, 1, 1, bias=False), nn.BatchNorm2d(c * 2), nn.GLU(dim=1),
                                  nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None, dim: int) -> torch.Tensor:
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim)


class SpatialAttention(nn.Module):
    """AttnGAN's word attention: each position's context is the words weighted by their match with it."""

    def __init__(self, channels: int, word_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(word_dim, channels, bias=False)

    def forward(self, h: torch.Tensor, words: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, c, hh, ww = h.shape
        e = self.proj(words)  # [B, L, C]
        q = h.flatten(2).transpose(1, 2)  # [B, N, C]
        attn = _masked_softmax(q @ e.transpose(1, 2), None if mask is None else mask[:, None, :], -1)  # [B, N, L]
        return (attn @ e).transpose(1, 2).reshape(b, c, hh, ww)


class ChannelAttention(nn.Module):
    """ControlGAN's channel-wise attention: words projected to the map's N positions; each channel
    (an N-vector) attends over the words."""

    def __init__(self, side: int, word_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(word_dim, side * side, bias=False)

    def forward(self, h: torch.Tensor, words: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, c, hh, ww = h.shape
        f = self.proj(words)  # [B, L, N]
        v = h.flatten(2)  # [B, C, N]
        attn = _masked_softmax(v @ f.transpose(1, 2), None if mask is None else mask[:, None, :], -1)  # [B, C, L]
        return (attn @ f).view(b, c, hh, ww)


class ControlGenerator(nn.Module):
    """Stages of images from z, the sentence and the words; returns every stage's image and the
    conditioning augmentation's mean and log-variance (for its KL term)."""

    def __init__(self, config: ControlGANConfig) -> None:
        super().__init__()
        c, sides = config.channels, config.sides
        self.ca = nn.Linear(config.clip_dim, config.cond_dim * 4)  # GLU -> mu, logvar
        n_up = int(math.log2(config.base_size // 4))
        top = c * 2 ** n_up
        self.fc = nn.Sequential(nn.Linear(config.z_dim + config.cond_dim, top * 16 * 2, bias=False),
                                nn.BatchNorm1d(top * 16 * 2), nn.GLU(dim=1))
        self.top = top
        self.stem = nn.Sequential(*[_up(top // 2 ** i, top // 2 ** (i + 1)) for i in range(n_up)])
        self.spatial = nn.ModuleList([SpatialAttention(c, config.word_dim) for _ in sides[1:]])
        self.channel = nn.ModuleList([ChannelAttention(side // 2, config.word_dim) for side in sides[1:]])
        self.refine = nn.ModuleList([nn.Sequential(nn.Conv2d(3 * c, c * 2, 1, bias=False), nn.BatchNorm2d(c * 2),
                                                   nn.GLU(dim=1), _Residual(c), _Residual(c), _up(c, c))
                                     for _ in sides[1:]])
        self.to_image = nn.ModuleList([nn.Sequential(nn.Conv2d(c, 3, 3, 1, 1), nn.Tanh()) for _ in sides])

    def condition(self, sentence: torch.Tensor, noise: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        mu, logvar = F.glu(self.ca(sentence), dim=1).chunk(2, dim=1)
        c = mu if noise is None else mu + (0.5 * logvar).exp() * noise
        return c, mu, logvar

    def forward(self, z: torch.Tensor, sentence: torch.Tensor, words: torch.Tensor, mask: torch.Tensor | None,
                ca_noise: torch.Tensor | None = None) -> dict[str, Any]:
        c, mu, logvar = self.condition(sentence, ca_noise)
        h = self.stem(self.fc(torch.cat([z, c], dim=1)).view(len(z), self.top, 4, 4))
        images = [self.to_image[0](h)]
        for i in range(len(self.refine)):
            ctx = torch.cat([h, self.spatial[i](h, words, mask), self.channel[i](h, words, mask)], dim=1)
            h = self.refine[i](ctx)
            images.append(self.to_image[i + 1](h))
        return {"images": images, "mu": mu, "logvar": logvar}


class StageDiscriminator(nn.Module):
    """One stage's discriminator: unconditional and sentence-conditional logits, and (``words``) the
    word-level logit from its 8x8 region features."""

    def __init__(self, side: int, config: ControlGANConfig, word_level: bool) -> None:
        super().__init__()
        c = config.disc_channels
        n = int(math.log2(side // 4))
        layers: list[nn.Module] = [nn.Conv2d(3, c, 4, 2, 1), nn.LeakyReLU(0.2)]
        for i in range(1, n):
            layers += [nn.Conv2d(c * 2 ** (i - 1), c * 2 ** i, 4, 2, 1, bias=False), nn.BatchNorm2d(c * 2 ** i),
                       nn.LeakyReLU(0.2)]
        self.to_regions = nn.Sequential(*layers[:-3]) if n > 1 else nn.Identity()  # the 8x8 map
        self.rest = nn.Sequential(*layers[-3:]) if n > 1 else nn.Sequential(*layers)
        top = c * 2 ** (n - 1)
        region_c = c * 2 ** (n - 2) if n > 1 else 3
        self.uncond = nn.Conv2d(top, 1, 4)
        self.sentence = nn.Linear(config.clip_dim, top)
        self.cond = nn.Sequential(nn.Conv2d(top * 2, top, 3, 1, 1, bias=False), nn.BatchNorm2d(top),
                                  nn.LeakyReLU(0.2), nn.Conv2d(top, 1, 4))
        if word_level:
            self.region_proj = nn.Conv2d(region_c, config.word_dim, 1)
            self.word_score = nn.Linear(config.word_dim, config.word_dim, bias=False)
            self.word_importance = nn.Linear(config.word_dim, 1)
        self.word_level = word_level

    def forward(self, x: torch.Tensor, sentence: torch.Tensor, words: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        regions = self.to_regions(x)
        h = self.rest(regions)
        s = self.sentence(sentence)[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])
        out = {"uncond": self.uncond(h).flatten(), "cond": self.cond(torch.cat([h, s], dim=1)).flatten()}
        if self.word_level and words is not None:
            out["word"] = self.word_logit(regions, words, mask)
        return out

    def word_logit(self, regions: torch.Tensor, words: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Each word attends over the regions and is scored against what it found; the scores are
        averaged with a learned importance per word (padding left out)."""
        v = self.region_proj(regions).flatten(2).transpose(1, 2)  # [B, R, D]
        e = F.normalize(words, dim=-1)
        attn = (e @ F.normalize(v, dim=-1).transpose(1, 2) * 10).softmax(-1)  # [B, L, R]
        found = attn @ v  # [B, L, D]
        score = (self.word_score(e) * found).sum(-1)  # [B, L]
        importance = _masked_softmax(self.word_importance(e).squeeze(-1), mask, -1)
        return (importance * score).sum(-1)


class ControlGAN(ClipLinked):
    """The generator and a discriminator per stage over one frozen CLIP; saved as arch ``controlgan``.
    Samples are the last stage's images."""

    arch = "controlgan"
    kind = "generator"

    def __init__(self, config: ControlGANConfig) -> None:
        super().__init__()
        self.config = config
        self.generator = ControlGenerator(config)
        sides = config.sides
        self.discriminators = nn.ModuleList([StageDiscriminator(s, config, word_level=i == len(sides) - 1)
                                             for i, s in enumerate(sides)])
        dcgan_init(self)

    def latent_shape(self) -> tuple[int, ...]:
        return (self.config.z_dim,)

    def draw_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn((n, self.config.z_dim), generator=generator)

    def condition(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The prompts' unit CLIP embeddings (``sentence``), their token features (``words``) and the
        mask of the word positions."""
        if self.clip is None or self.clip.tokenizer is None:
            raise ConfigError(f"this generator's CLIP ({self.config.clip_path or 'unknown'}) is not attached")
        tokens = self.clip.tokenizer(prompts).to(next(self.clip.parameters()).device)
        return text_condition(self.clip, tokens)

    def render(self, latents: torch.Tensor, condition: dict[str, torch.Tensor], **_: Any) -> torch.Tensor:
        """The last stage's images for ``latents`` (a batch-1 condition is shared), differentiable in them."""
        device = next(self.parameters()).device
        n = len(latents)
        cond = {k: (v.expand(n, *v.shape[1:]) if len(v) == 1 else v).to(device) for k, v in condition.items()}
        self.generator.eval()
        return self.generator(latents.to(device), cond["sentence"], cond["words"], cond["mask"])["images"][-1]

    @torch.no_grad()
    def generate(self, prompts: list[str], generator: torch.Generator | None = None,
                 latents: torch.Tensor | None = None, **_: Any) -> dict[str, torch.Tensor]:
        cond = self.condition(prompts)
        z = latents if latents is not None else self.draw_latents(len(prompts), generator)
        return {"images": self.render(z, cond), "text_features": cond["sentence"]}


@torch.no_grad()
def text_condition(clip: Any, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """``sentence`` (unit CLIP text embeddings), ``words`` (the tower's outputs at each position) and
    ``mask`` (the word positions: after the start token, up to and including the end token, where
    the causal tower has read the whole caption)."""
    out = clip.encode_text_tokens(tokens)
    words = out["tokens"]
    positions = torch.arange(words.shape[1], device=words.device)
    eot = out["eot"]
    mask = (positions[None] >= 1) & (positions[None] <= eot[:, None])
    return {"sentence": F.normalize(out["pooled"], dim=-1), "words": words, "mask": mask}
