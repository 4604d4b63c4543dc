"""The CLIP model: two towers, a joint space and a learnable temperature (Radford et al. 2021)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.images.preprocess import Preprocess
from clipforge.models.config import CLIPConfig
from clipforge.models.towers import build_image_tower, build_text_tower


class TwoTowers(nn.Module):
    """What CLIP and CoCa share: ``visual`` and ``text`` towers, a learnable ``logit_scale`` clamped at
    ``config.max_logit_scale``, and the encoders (pooled, or per token)."""

    config: Any
    visual: nn.Module
    text: nn.Module
    logit_scale: nn.Parameter

    @property
    def max_log_scale(self) -> float:
        return math.log(self.config.max_logit_scale)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """images float [N,3,H,W] -> projected image features [N, embed_dim]."""
        feats = self.visual(images)
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """tokens int64 [N,L] -> projected text features [N, embed_dim]."""
        feats = self.text(tokens)
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_image_tokens(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``pooled``: projected image features [N, embed_dim] (unnormalised), and ``tokens``: the
        tower's per-position outputs [N, P, width] (ViT patches, ResNet grid cells), for decoders
        that cross-attend to the image."""
        return self.visual.forward_tokens(images)

    def encode_image_middle(self, images: torch.Tensor) -> torch.Tensor:
        """The image tower's middle features (ResNet: after its second stage; ViT: after half its
        blocks), for perceptual losses."""
        return self.visual.forward_middle(images)

    def encode_text_tokens(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """``pooled``: projected text features [N, embed_dim] (unnormalised), ``tokens``: per-token
        outputs [N, L, width], and the tower's extras (``eot`` positions or an attention ``mask``)."""
        return self.text.forward_tokens(tokens)

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Keep exp(logit_scale) within [1, max_logit_scale], as the CLIP paper does."""
        self.logit_scale.clamp_(0.0, self.max_log_scale)


class CLIP(TwoTowers):
    """Image tower + text tower, each projected into an ``embed_dim`` space, and a temperature.

    ``logit_scale`` stores log(1/temperature), initialised to log(1/0.07); its exponential is
    clamped at ``config.max_logit_scale`` (100), both in :meth:`forward` and by
    :meth:`clamp_logit_scale_` which trainers call after each optimiser step.

    Args:
        config: the model's shape.

    Attributes:
        tokenizer: the tokenizer this model was trained with, set by :func:`clipforge.load`
            (a callable: list of strings -> int64 [N, context_length]); ``None`` when unknown.
        preprocess: image preprocessing for this model (image size, mean/std).
    """

    def __init__(self, config: CLIPConfig) -> None:
        super().__init__()
        self.config = config
        self.visual: nn.Module = build_image_tower(config)
        self.text: nn.Module = build_text_tower(config)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        if config.init_logit_bias is not None:  # SigLIP: sigmoid(scale * cos + bias)
            self.logit_bias = nn.Parameter(torch.tensor(float(config.init_logit_bias)))
        self.tokenizer: Any = None
        self.preprocess: Preprocess = Preprocess(image_size=config.vision.image_size)

    def forward(
        self, images: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns normalised image features, normalised text features and exp(logit_scale)."""
        return (
            self.encode_image(images, normalize=True),
            self.encode_text(tokens, normalize=True),
            self.logit_scale.clamp(max=self.max_log_scale).exp(),
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in the backward pass of both towers to save memory."""
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    def lock_image_tower(self) -> None:
        for p in self.visual.parameters():
            p.requires_grad_(False)

    def lock_text_tower(self) -> None:
        for p in self.text.parameters():
            p.requires_grad_(False)
