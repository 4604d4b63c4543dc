"""Models that read a CLIP's embeddings but do not own it (captioners, generators): the CLIP is
attached (checked by its weight fingerprint), used, and never trained or saved with the model."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.errors import ConfigError


class ClipLinked(nn.Module):
    """Base of the models over a frozen CLIP; ``config`` has ``clip_dim``, ``clip_path`` and
    ``clip_fingerprint``; ``kind`` names the model in messages."""

    kind = "captioner"

    config: Any

    def __init__(self) -> None:
        super().__init__()
        self.tokenizer: Any = None
        self.preprocess: Any = None
        object.__setattr__(self, "clip", None)  # not a submodule: not trained, not saved

    def attach_clip(self, clip: Any) -> ClipLinked:
        """Give the model the CLIP whose embeddings it was trained on (checked by fingerprint)."""
        from clipforge.evaluation.cache import model_fingerprint

        if clip.config.embed_dim != self.config.clip_dim:
            raise ConfigError(f"the CLIP embeds in {clip.config.embed_dim} dimensions, the {self.kind} reads "
                              f"{self.config.clip_dim}")
        if self.config.clip_fingerprint and model_fingerprint(clip) != self.config.clip_fingerprint:
            raise ConfigError(f"this {self.kind} reads the embeddings of {self.config.clip_path or 'another CLIP'}; "
                              "the CLIP given has other weights")
        object.__setattr__(self, "clip", clip)
        self.preprocess = clip.preprocess
        return self

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """The attached CLIP's unit embeddings of preprocessed ``images``."""
        if self.clip is None:
            raise ConfigError(f"this {self.kind}'s CLIP ({self.config.clip_path or 'unknown'}) is not attached; "
                              "load it and call attach_clip(clip)")
        return F.normalize(self.clip.encode_image(images.to(next(self.clip.parameters()).device)), dim=-1)

    def text_features(self, texts: list[str]) -> torch.Tensor:
        """The attached CLIP's unit embeddings of ``texts``."""
        if self.clip is None or self.clip.tokenizer is None:
            raise ConfigError(f"this {self.kind}'s CLIP ({self.config.clip_path or 'unknown'}) is not attached or "
                              "has no tokenizer")
        tokens = self.clip.tokenizer(texts).to(next(self.clip.parameters()).device)
        return F.normalize(self.clip.encode_text(tokens), dim=-1)
