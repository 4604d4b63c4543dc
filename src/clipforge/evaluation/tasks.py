"""Zero-shot classification and retrieval of a loaded dataset: the one implementation that the
command line, the training loop's evaluation and the demo report all call."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clipforge.data.pairs import Skipped
from clipforge.evaluation.cache import image_features
from clipforge.evaluation.datasets import CaptionedImages, LabelledImages
from clipforge.evaluation.embed import embed_texts
from clipforge.evaluation.retrieval import retrieval_metrics
from clipforge.evaluation.zero_shot import classification_metrics, zero_shot_logits
from clipforge.models.clip import CLIP


def zero_shot_task(model: CLIP, ds: LabelledImages, templates: Sequence[str] | Sequence[Sequence[str]],
                   batch_size: int = 128, use_cache: bool = False,
                   progress: bool = False) -> tuple[dict[str, float], torch.Tensor, torch.Tensor, list[Skipped]]:
    """(metrics, logits [M, C], targets [M], skipped images) over the readable images of ``ds``."""
    feats, idx, skipped = image_features(model, ds.images, batch_size, use_cache=use_cache, progress=progress,
                                         label="embed images")
    targets = torch.tensor(ds.labels, dtype=torch.long)[idx]
    logits = zero_shot_logits(model, feats, ds.classes, templates)
    return classification_metrics(logits, targets), logits, targets, skipped


def retrieval_task(model: CLIP, ds: CaptionedImages, batch_size: int = 128, use_cache: bool = False,
                   progress: bool = False,
                   features: tuple[torch.Tensor, torch.Tensor, list[Skipped]] | None = None,
                   ) -> tuple[dict[str, float], list[Skipped]]:
    """Recall@k both ways; unreadable images are left out together with their captions.

    ``features``: the images' (features, indices, skipped) when the caller already has them.
    """
    feats, idx, skipped = features or image_features(model, ds.images, batch_size, use_cache=use_cache,
                                                      progress=progress, label="embed images")
    keep = {int(i): j for j, i in enumerate(idx.tolist())}
    captions = [c for c, i in zip(ds.captions, ds.text_to_image) if i in keep]
    text_to_image = [keep[i] for i in ds.text_to_image if i in keep]
    return retrieval_metrics(feats, embed_texts(model, captions), text_to_image), skipped
