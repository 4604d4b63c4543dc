"""The evaluation run after each epoch: zero-shot sets and validation retrieval."""

from __future__ import annotations

from typing import Any

import torch

from clipforge.evaluation.datasets import load_classification, load_retrieval
from clipforge.evaluation.tasks import retrieval_task, zero_shot_task
from clipforge.models.clip import CLIP
from clipforge.training.config import TrainConfig


@torch.no_grad()
def evaluate(model: CLIP, config: TrainConfig, progress: bool = False) -> dict[str, Any]:
    model.eval()
    out: dict[str, Any] = {}
    for zs in config.data.zeroshot:
        ds = load_classification(zs.csv, image_column=zs.image_column, label_column=zs.label_column,
                                 classes=list(zs.classes) or None)
        metrics, _, _, _ = zero_shot_task(model, ds, zs.templates, progress=progress)
        out.update({f"{zs.name}/{k}": v for k, v in metrics.items()})
    if config.data.val:
        ds = load_retrieval(config.data.val, config.data.image_column, config.data.caption_column,
                            config.data.separator)
        metrics, _ = retrieval_task(model, ds, progress=progress)
        out.update({f"val/{k}": v for k, v in metrics.items()})
    return out
