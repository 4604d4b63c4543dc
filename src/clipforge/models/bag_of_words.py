"""Bag-of-words prediction: an image tower and a linear head that predicts the caption's words.

The CLIP paper's baseline objective (Radford et al. 2021, section 2.3 and Figure 2): instead of
matching a caption, the image model predicts which words the caption contains. The loss is the
multi-class logistic loss against the caption's *normalised* bag (Joulin et al. 2016, "Learning
Visual Features from Large Weakly Supervised Data", section 3.1: softmax over the vocabulary, target
q_w = count_w / sum of counts), which they found better than one-vs-all sigmoids:

    loss = - sum_w q_w log softmax(W f(x))_w

The "words" are the tokenizer's tokens without its start, end and padding ids (with a BPE learned on
the captions, nearly every word is one token). A text is scored by its bag's log-likelihood,
``sum_w count_w log p(w | x)``, which is how the model classifies zero-shot.

The image tower is a CLIP's (ViT or ResNet) or a CoCa's (ViT and attentional pooler), built from
that model's config, so an objective comparison can use exactly the tower the other objectives use.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.config import build_config
from clipforge.errors import ConfigError
from clipforge.images.preprocess import Preprocess


@dataclass(frozen=True)
class BagOfWordsConfig:
    """``tower``: the config (as a mapping) of the model whose image tower is used, a CLIP's or a
    CoCa's (``tower_arch``); ``vocab_size``: the head's outputs; ``ignore_ids``: token ids that are
    not words (start, end, padding)."""

    tower_arch: Literal["clip", "coca"] = "clip"
    tower: dict[str, Any] = field(default_factory=dict)
    vocab_size: int = 49408
    ignore_ids: list[int] = field(default_factory=lambda: [0, 49406, 49407])

    def tower_config(self) -> Any:
        if self.tower_arch == "coca":
            from clipforge.models.coca import CoCaConfig

            return CoCaConfig.from_dict(self.tower)
        from clipforge.models.config import CLIPConfig

        return CLIPConfig.from_dict(self.tower)

    @property
    def embed_dim(self) -> int:
        """Width of the image features (the tower's projection)."""
        return int(self.tower.get("embed_dim", 0))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BagOfWordsConfig:
        cfg = build_config(cls, dict(d), "", strict=True)
        if cfg.tower_arch not in ("clip", "coca"):
            raise ConfigError(f"tower_arch must be 'clip' or 'coca', got {cfg.tower_arch!r}")
        return cfg

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


class BagOfWords(nn.Module):
    """Image tower -> linear head over the vocabulary (see the module docstring).

    ``forward(images)`` returns ``{"features": [N, embed_dim], "logits": [N, vocab_size]}``.
    """

    arch = "bag_of_words"

    def __init__(self, config: BagOfWordsConfig) -> None:
        super().__init__()
        self.config = config
        tower = config.tower_config()
        if config.tower_arch == "coca":
            from clipforge.models.coca import CoCaVisionTower

            self.visual: nn.Module = CoCaVisionTower(tower)
        else:
            from clipforge.models.towers import build_image_tower

            self.visual = build_image_tower(tower)
        self.head = nn.Linear(tower.embed_dim, config.vocab_size)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("word_mask", self._word_mask(), persistent=False)
        self.tokenizer: Any = None
        self.preprocess = Preprocess(image_size=tower.vision.image_size)

    def _word_mask(self) -> torch.Tensor:
        mask = torch.ones(self.config.vocab_size, dtype=torch.bool)
        ids = [i for i in self.config.ignore_ids if 0 <= i < self.config.vocab_size]
        mask[ids] = False
        return mask

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.visual(images)
        return {"features": features, "logits": self.head(features)}

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """The image tower's features [N, embed_dim] (for linear probes, kNN, search by image)."""
        features = self.visual(images)
        return F.normalize(features, dim=-1) if normalize else features

    def bags(self, tokens: torch.Tensor) -> torch.Tensor:
        """Word counts [N, vocab_size] of token rows [N, L] (start, end and padding ids left out)."""
        counts = torch.zeros(tokens.shape[0], self.config.vocab_size, device=tokens.device)
        counts.scatter_add_(1, tokens, torch.ones_like(tokens, dtype=counts.dtype))
        return counts * self.word_mask.to(counts.device)

    def loss(self, logits: torch.Tensor, tokens: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy against each caption's normalised bag (mean or sum over the samples)."""
        logits = logits if logits.dtype == torch.float64 else logits.float()  # autocast's halves: fp32 loss
        counts = self.bags(tokens).to(logits.dtype)
        target = counts / counts.sum(dim=1, keepdim=True).clamp(min=1.0)
        per_sample = -(target * F.log_softmax(logits, dim=-1)).sum(dim=1)
        return per_sample.sum() if reduction == "sum" else per_sample.mean()

    def lock_image_tower(self) -> None:
        for p in self.visual.parameters():
            p.requires_grad_(False)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if hasattr(self.visual, "set_grad_checkpointing"):
            self.visual.set_grad_checkpointing(enable)

    @torch.no_grad()
    def text_log_likelihood(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """[N_images, N_texts]: each text's bag log-likelihood ``sum_w count_w log p(w | image)``."""
        logits = self(images)["logits"]
        log_p = F.log_softmax(logits if logits.dtype == torch.float64 else logits.float(), dim=-1)
        return log_p @ self.bags(tokens.to(images.device)).to(log_p.dtype).T
