"""What every probe-style evaluation starts from: a train and a test set, and their labelled features.

Shared by ``clipforge eval linear-probe / fewshot / overlap`` and usable from Python; the model may be
None for raw-pixel features (the baseline a learned representation has to beat).
"""

from __future__ import annotations

import logging

import torch

from clipforge.data.datasets import BUILTIN, LabelledImages, load_classification, pixel_features
from clipforge.data.pairs import Skipped
from clipforge.errors import DataError
from clipforge.models.clip import CLIP

log = logging.getLogger(__name__)


def train_test_sets(dataset: str, test: str | None = None, image_column: str = "image",
                    label_column: str = "label") -> tuple[LabelledImages, LabelledImages]:
    """A built-in name's train/test splits, or ``dataset`` as training set and ``test`` (same classes)."""
    if dataset in BUILTIN:
        return load_classification(dataset, "train"), load_classification(dataset, "test")
    if not test:
        raise DataError(f"{dataset} is not a built-in dataset: give the test set with --test")
    train = load_classification(dataset, image_column=image_column, label_column=label_column)
    return train, load_classification(test, image_column=image_column, label_column=label_column,
                                      classes=train.classes)


def labelled_features(model: CLIP | None, ds: LabelledImages, batch_size: int = 128, use_cache: bool = True,
                      label: str = "embed") -> tuple[torch.Tensor, torch.Tensor, list[Skipped]]:
    """(features [M, D], labels [M], skipped) of the readable images of ``ds``; pixels when ``model`` is None."""
    from clipforge.evaluation.cache import image_features

    if model is None:
        feats, idx = pixel_features(ds.images)
        return feats, torch.tensor(ds.labels)[idx], []
    feats, idx, skipped = image_features(model, ds.images, batch_size, use_cache=use_cache, label=label)
    warn_skipped(skipped, ds.name)
    return feats, torch.tensor(ds.labels)[idx], skipped


def warn_skipped(skipped: list[Skipped], name: str) -> None:
    if skipped:
        log.warning(f"{len(skipped)} unreadable image(s) left out of {name}, e.g. {skipped[0].source}")


def warn_missing(ds: LabelledImages) -> None:
    if ds.missing:
        log.warning(f"{len(ds.missing)} image(s) listed in {ds.name} do not exist, e.g. {ds.missing[0]}")
