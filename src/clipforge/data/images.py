"""Images without captions: one dataset and collate for evaluation, embedding and SSL pretraining.

:class:`ImageDataset` decodes each image and applies a transform (a model's preprocessing, or a
uint8 resize-and-crop for augmentation on the device); an unreadable image comes back as a
:class:`~clipforge.data.pairs.Skipped` record, and :func:`collate_images` keeps the indices of the
readable ones, so the caller knows which inputs each feature row belongs to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from clipforge.data.pairs import Skipped
from clipforge.errors import ImageReadError
from clipforge.images.decode import open_image
from clipforge.images.preprocess import center_crop, resize_short_side


class ImageBatch(NamedTuple):
    images: torch.Tensor  # [M, ...] the readable images of the batch
    indices: torch.Tensor  # [M] their positions in the dataset
    skipped: list[Skipped]


class ImageDataset(Dataset):
    """``transform(PIL RGB image) -> tensor`` of each image path; unreadable ones give :class:`Skipped`."""

    def __init__(self, images: Sequence[str], transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.images, self.transform = list(images), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor] | Skipped:
        name = str(self.images[i])
        try:
            return i, self.transform(open_image(name))
        except ImageReadError as e:
            return Skipped("unreadable image", name, str(e))


def collate_images(items: list[tuple[int, torch.Tensor] | Skipped]) -> ImageBatch:
    good = [x for x in items if not isinstance(x, Skipped)]
    skipped = [x for x in items if isinstance(x, Skipped)]
    if not good:
        return ImageBatch(torch.empty(0, 3, 1, 1), torch.empty(0, dtype=torch.long), skipped)
    return ImageBatch(torch.stack([t for _, t in good]), torch.tensor([i for i, _ in good]), skipped)


class Uint8Crop:
    """Short side resized to ``size``, centre crop: a uint8 [3, size, size] tensor (augmented later, batched)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = center_crop(resize_short_side(img, self.size), self.size)
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
