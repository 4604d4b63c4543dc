"""Bag-of-words prediction with ``clipforge train loss=bag_of_words``: the CLIP paper's baseline
objective (:mod:`clipforge.models.bag_of_words`) on the same pairs, data handling, evaluation and
checkpoints as a CLIP. The loss is a mean over samples, so accumulation and ranks need no coupling.
"""

from __future__ import annotations

from typing import Any

import torch

from clipforge.engine.distributed import DistInfo, average_gradients
from clipforge.models.bag_of_words import BagOfWords
from clipforge.training.task import CLIPTask, _images_tokens


class BagOfWordsTask(CLIPTask):
    """Images -> the normalised bag of their caption's words (softmax cross-entropy)."""

    min_batch = 1

    def __init__(self, model: BagOfWords, config: Any, pairs: list, n_samples: int, dist: DistInfo,
                 device: torch.device) -> None:
        super().__init__(model, config, pairs, n_samples, None, dist, device)  # type: ignore[arg-type]

    @property
    def couples_batch(self) -> bool:
        return False

    def training_step(self, batch: Any, ctx: Any) -> dict[str, Any]:
        images, tokens = _images_tokens(batch)
        with ctx.autocast():
            logits = self.model(images)["logits"]
        return {"loss": self.model.loss(logits, tokens)}

    def reduce_gradients(self, info: DistInfo) -> None:
        average_gradients(self.model, info)

    def after_optimizer_step(self, step: int, total_steps: int) -> dict[str, float]:
        return {}
