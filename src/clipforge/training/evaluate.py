"""The evaluation run after each epoch: zero-shot sets and validation retrieval."""

from __future__ import annotations

from typing import Any

import torch

from clipforge.data.pairs import read_csv_pairs, read_pairs
from clipforge.errors import ConfigError
from clipforge.evaluation import (
    classification_metrics,
    embed_images,
    embed_texts,
    retrieval_metrics,
    zero_shot_classifier,
)
from clipforge.models.clip import CLIP
from clipforge.training.config import TrainConfig, ZeroShotSet


@torch.no_grad()
def evaluate(model: CLIP, config: TrainConfig, progress: bool = False) -> dict[str, Any]:
    model.eval()
    out: dict[str, Any] = {}
    for zs in config.data.zeroshot:
        for k, v in zero_shot_eval(model, zs).items():
            out[f"{zs.name}/{k}"] = v
    if config.data.val:
        pairs, _ = read_pairs(config.data.val, config.data.image_column, config.data.caption_column,
                              config.data.separator)
        for k, v in retrieval_eval(model, [p.image for p in pairs], [p.caption for p in pairs]).items():
            out[f"val/{k}"] = v
    return out


def zero_shot_eval(model: CLIP, zs: ZeroShotSet) -> dict[str, float]:
    rows, _ = read_csv_pairs(zs.csv, zs.image_column, zs.label_column)
    classes = list(zs.classes) or sorted({r.caption for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({r.caption for r in rows} - set(index))
    if unknown:
        raise ConfigError(f"{zs.csv}: labels {unknown[:5]} are not among the {len(classes)} classes of {zs.name}")
    weights = zero_shot_classifier(model, classes, zs.templates)
    feats, idx, _ = embed_images(model, [r.image for r in rows])
    targets = torch.tensor([index[rows[i].caption] for i in idx.tolist()])
    return classification_metrics(feats @ weights.T, targets)


def retrieval_eval(model: CLIP, images: list[str], captions: list[str]) -> dict[str, float]:
    """Each pair is one image with one caption; identical paths are one image with several captions."""
    unique = list(dict.fromkeys(images))
    pos = {p: i for i, p in enumerate(unique)}
    feats, idx, _ = embed_images(model, unique)
    keep = {int(i) for i in idx}
    remap = {int(i): j for j, i in enumerate(idx.tolist())}
    text_to_image = [remap[pos[p]] for p in images if pos[p] in keep]
    texts = [c for p, c in zip(images, captions) if pos[p] in keep]
    return retrieval_metrics(feats, embed_texts(model, texts), text_to_image)
