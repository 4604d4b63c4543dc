"""Zero-shot classification and retrieval of a loaded dataset: the one implementation that the
command line, the training loop's evaluation and the demo report all call."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clipforge.data.datasets import CaptionedImages, LabelledImages
from clipforge.data.pairs import DataError, Skipped
from clipforge.evaluation.cache import image_features
from clipforge.evaluation.embed import embed_texts
from clipforge.evaluation.retrieval import retrieval_metrics
from clipforge.evaluation.zero_shot import classification_metrics, zero_shot_logits
from clipforge.models.clip import CLIP


def _require_images(name: str, total: int) -> None:
    if total == 0:
        raise DataError(f"{name}: no images to evaluate")


def _require_readable(name: str, total: int, readable: int, skipped: list[Skipped]) -> None:
    if readable == 0:
        example = f" (e.g. {skipped[0].source}: {skipped[0].detail or skipped[0].reason})" if skipped else ""
        raise DataError(f"{name}: none of its {total} images could be read{example}")


def zero_shot_task(model: CLIP, ds: LabelledImages, templates: Sequence[str] | Sequence[Sequence[str]],
                   batch_size: int = 128, use_cache: bool = False,
                   progress: bool = False) -> tuple[dict[str, float], torch.Tensor, torch.Tensor, list[Skipped]]:
    """(metrics, logits [M, C], targets [M], skipped images) over the readable images of ``ds``.

    A dataset with no readable image is refused (:class:`DataError`), never scored as NaN.
    """
    _require_images(ds.name, len(ds.images))
    feats, idx, skipped = image_features(model, ds.images, batch_size, use_cache=use_cache, progress=progress,
                                         label="embed images")
    _require_readable(ds.name, len(ds.images), len(idx), skipped)
    targets = torch.tensor(ds.labels, dtype=torch.long)[idx]
    logits = zero_shot_logits(model, feats, ds.classes, templates)
    return classification_metrics(logits, targets), logits, targets, skipped


def retrieval_task(model: CLIP, ds: CaptionedImages, batch_size: int = 128, use_cache: bool = False,
                   progress: bool = False,
                   features: tuple[torch.Tensor, torch.Tensor, list[Skipped]] | None = None,
                   ) -> tuple[dict[str, float], list[Skipped], dict[str, int]]:
    """Recall@k both ways over the readable images that have captions, and their captions.

    Returns (metrics, skipped images, counts): ``counts`` holds ``n_images`` and ``n_captions``
    actually evaluated (unreadable images and their captions, and images without a caption, are
    left out). ``features``: the images' (features, indices, skipped) when the caller already has them.
    """
    _require_images(ds.name, len(ds.images))
    if not ds.captions:
        raise DataError(f"{ds.name}: no captions to evaluate retrieval with")
    feats, idx, skipped = features or image_features(model, ds.images, batch_size, use_cache=use_cache,
                                                      progress=progress, label="embed images")
    _require_readable(ds.name, len(ds.images), len(idx), skipped)
    captioned = set(ds.text_to_image)
    rows = [j for j, i in enumerate(idx.tolist()) if i in captioned]
    keep = {int(idx[j]): k for k, j in enumerate(rows)}
    captions = [c for c, i in zip(ds.captions, ds.text_to_image) if i in keep]
    text_to_image = [keep[i] for i in ds.text_to_image if i in keep]
    metrics = retrieval_metrics(feats[rows], embed_texts(model, captions), text_to_image)
    return metrics, skipped, {"n_images": len(rows), "n_captions": len(captions)}
