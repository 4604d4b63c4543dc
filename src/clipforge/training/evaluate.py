"""The evaluation run after each epoch: zero-shot sets and validation retrieval."""

from __future__ import annotations

import logging
from typing import Any

import torch

from clipforge.data.datasets import load_classification, load_retrieval
from clipforge.errors import ClipforgeError
from clipforge.evaluation.likelihood_zero_shot import likelihood_zero_shot_task
from clipforge.evaluation.tasks import retrieval_task, zero_shot_task
from clipforge.models.clip import CLIP
from clipforge.training.config import TrainConfig

log = logging.getLogger(__name__)


def _zeroshot_sets(config: TrainConfig) -> list[tuple[Any, Any]]:
    return [(zs, load_classification(zs.csv, image_column=zs.image_column, label_column=zs.label_column,
                                     classes=list(zs.classes) or None)) for zs in config.data.zeroshot]


def check_eval_data(config: TrainConfig) -> None:
    """Read the evaluation sets once before training, so a missing or empty one fails before any work."""
    if config.eval_every_epochs:
        _zeroshot_sets(config)
        if config.data.val:
            load_retrieval(config.data.val, config.data.image_column, config.data.caption_column,
                           config.data.separator, config.data.caption_split)


@torch.no_grad()
def evaluate(model: CLIP, config: TrainConfig, progress: bool = False) -> dict[str, Any]:
    """Each set's metrics; a set that cannot be evaluated (no readable image) is left out with a warning."""
    model.eval()
    out: dict[str, Any] = {}
    embeds_text = hasattr(model, "encode_text")
    for zs, ds in _zeroshot_sets(config):
        try:
            if zs.scoring == "likelihood" or not embeds_text:
                metrics, _, _, _ = likelihood_zero_shot_task(model, ds, zs.templates, progress=progress)
            else:
                metrics, _, _, _ = zero_shot_task(model, ds, zs.templates, progress=progress)
        except ClipforgeError as e:
            log.warning(f"zero-shot set {zs.name} not evaluated: {e}")
            continue
        out.update({f"{zs.name}/{k}": v for k, v in metrics.items()})
    if config.data.val and embeds_text:  # a bag-of-words model has no text embedding to retrieve with
        ds = load_retrieval(config.data.val, config.data.image_column, config.data.caption_column,
                            config.data.separator, config.data.caption_split)
        try:
            metrics, _, _ = retrieval_task(model, ds, progress=progress)
        except ClipforgeError as e:
            log.warning(f"validation retrieval not evaluated: {e}")
            return out
        out.update({f"val/{k}": v for k, v in metrics.items()})
    return out
