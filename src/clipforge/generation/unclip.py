"""unCLIP (Ramesh et al. 2022): text -> CLIP image embedding (the prior) -> image (the decoder).

The decoder is a :class:`~clipforge.generation.diffusion.CLIPDiffusion` conditioned on CLIP
*image* embeddings, so it also makes variations of an existing image (decode its embedding) and
follows interpolations between embeddings. The prior (:mod:`clipforge.generation.prior`) maps a
caption's text embedding to an image embedding; ``use_prior=False`` feeds the text embedding to
the decoder directly, the baseline the paper compares the prior with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from clipforge.config import StoredConfig
from clipforge.errors import ConfigError
from clipforge.generation.diffusion import CLIPDiffusion, DiffusionConfig
from clipforge.generation.prior import DiffusionPrior, PriorConfig
from clipforge.models.clip_linked import ClipLinked


@dataclass(frozen=True)
class UnCLIPConfig(StoredConfig):
    decoder: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(condition="image"))
    prior: PriorConfig = field(default_factory=PriorConfig)
    clip_dim: int = 512
    clip_path: str = ""
    clip_fingerprint: str = ""

    def __post_init__(self) -> None:
        if self.decoder.condition != "image":
            raise ConfigError("unCLIP's decoder is conditioned on CLIP image embeddings (decoder.condition=image)")



class UnCLIP(ClipLinked):
    """The prior and the decoder over one frozen CLIP; saved as arch ``unclip``."""

    arch = "unclip"
    kind = "generator"
    sampling_keys = ("steps", "sampler", "guidance", "eta", "use_prior")

    @property
    def image_size(self) -> int:
        return self.decoder.config.image_size

    def __init__(self, config: UnCLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.decoder = CLIPDiffusion(config.decoder)
        self.prior = DiffusionPrior(config.prior)

    def attach_clip(self, clip: Any) -> UnCLIP:
        super().attach_clip(clip)
        object.__setattr__(self.decoder, "clip", clip)
        return self

    @torch.no_grad()
    def generate(self, prompts: list[str], use_prior: bool = True, prior_guidance: float = 1.0,
                 prior_steps: int = 50, generator: torch.Generator | None = None,
                 **kwargs: Any) -> dict[str, torch.Tensor]:
        """Images for text ``prompts`` (``kwargs``: the decoder's sampling options), the prompts'
        ``text_features`` and the ``image_embeddings`` the decoder was given."""
        text = self.text_features(prompts)
        emb = self.prior.sample(text, steps=prior_steps, guidance=prior_guidance, generator=generator) \
            if use_prior else text
        return {"images": self.decoder.sample(emb, generator=generator, **kwargs), "text_features": text,
                "image_embeddings": emb}

    @torch.no_grad()
    def variations(self, images: torch.Tensor, n: int = 4, generator: torch.Generator | None = None,
                   **kwargs: Any) -> torch.Tensor:
        """``n`` images [len(images) * n, ...] decoded from each preprocessed image's CLIP embedding."""
        emb = self.image_features(images).repeat_interleave(n, dim=0)
        return self.decoder.sample(emb, generator=generator, **kwargs)
