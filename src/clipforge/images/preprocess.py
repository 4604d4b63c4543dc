"""CLIP's image preprocessing, written with Pillow and torch only.

Eval: resize the short side to ``image_size`` with bicubic resampling, centre crop, scale to
[0, 1], normalise by the model's mean/std. Same arithmetic as torchvision's
Resize/CenterCrop/ToTensor/Normalize, which open_clip uses. Train: the random square crop of the
CLIP paper (a random resized crop with scale 0.9 to 1.0) in place of resize + centre crop.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from clipforge.errors import ImageReadError
from clipforge.images.decode import open_image

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "nearest": Image.Resampling.NEAREST}


# Resizing the short side to `size` makes the long side `size * aspect`: a 321-byte 2,000,000x1 PNG
# would allocate gigabytes. Panoramas stay well inside this; a sliver beyond it is a bad sample.
MAX_ASPECT_RATIO = 100


def check_aspect(img: Image.Image, name: str = "image") -> None:
    """Refuse (:class:`ImageReadError`) an image too elongated to resize safely."""
    w, h = img.size
    if max(w, h) > MAX_ASPECT_RATIO * min(w, h):
        raise ImageReadError(f"{name}: {w}x{h} pixels is too elongated to resize (aspect ratio above "
                             f"{MAX_ASPECT_RATIO}:1)")


def resize_short_side(img: Image.Image, size: int, interpolation: str = "bicubic", name: str = "image") -> Image.Image:
    """Resize so the short side is ``size`` (long side truncated as torchvision does)."""
    check_aspect(img, name)
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return img
    new_long = int(size * long / short)
    new = (size, new_long) if w <= h else (new_long, size)
    return img.resize(new, _RESAMPLE[interpolation])


def center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    if w < size or h < size:  # pad as torchvision does, then crop
        canvas = Image.new(img.mode, (max(w, size), max(h, size)))
        canvas.paste(img, ((max(w, size) - w) // 2, (max(h, size) - h) // 2))
        img, (w, h) = canvas, canvas.size
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def to_tensor(img: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """RGB PIL image -> normalised float32 [3, H, W]."""
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return arr.sub_(m).div_(s)


@dataclass
class RandomResizedCrop:
    """Crop a random region of ``scale`` x area and aspect ``ratio``, resized to a square.

    The CLIP paper's training augmentation is this with ``scale=(0.9, 1.0)``.
    """

    size: int
    scale: tuple[float, float] = (0.9, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bicubic"

    def region(self, width: int, height: int, generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
        """(left, top, w, h) of the crop, following torchvision's sampling (10 tries, then centre)."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            u = torch.rand(1, generator=generator).item()
            target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * u)
            aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * torch.rand(1, generator=generator).item())
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
                return left, top, w, h
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            w, h = int(round(height * max(self.ratio))), height
        else:
            w, h = width, height
        return (width - w) // 2, (height - h) // 2, w, h

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        left, top, w, h = self.region(*img.size, generator=generator)
        return img.crop((left, top, left + w, top + h)).resize(
            (self.size, self.size), _RESAMPLE[self.interpolation]
        )


@dataclass
class Preprocess:
    """A model's image preprocessing; call it on a path, bytes or PIL image.

    Attributes:
        image_size: output side.
        mean, std: per-channel normalisation.
        interpolation: ``"bicubic"`` (CLIP's), ``"bilinear"`` or ``"nearest"``.
        train_crop_scale: area range of the random crop used when ``train=True``.
        train_crop_ratio: its aspect-ratio range.
    """

    image_size: int = 224
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"
    train_crop_scale: tuple[float, float] = field(default=(0.9, 1.0))
    train_crop_ratio: tuple[float, float] = field(default=(3 / 4, 4 / 3))

    def __post_init__(self) -> None:
        self.mean = tuple(float(x) for x in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(x) for x in self.std)  # type: ignore[assignment]
        self.train_crop_scale = tuple(float(x) for x in self.train_crop_scale)  # type: ignore[assignment]
        self.train_crop_ratio = tuple(float(x) for x in self.train_crop_ratio)  # type: ignore[assignment]
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation must be one of {sorted(_RESAMPLE)}, got {self.interpolation!r}")

    def __call__(
        self,
        image: str | os.PathLike | bytes | Image.Image,
        train: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        name = str(image) if isinstance(image, (str, os.PathLike)) else "image"
        img = open_image(image)
        if train:
            check_aspect(img, name)  # the eval path checks inside resize_short_side
            crop = RandomResizedCrop(self.image_size, scale=self.train_crop_scale, ratio=self.train_crop_ratio,
                                     interpolation=self.interpolation)
            img = crop(img, generator=generator)
        else:
            img = center_crop(resize_short_side(img, self.image_size, self.interpolation, name), self.image_size)
        return to_tensor(img, self.mean, self.std)

    def batch(self, images: list, train: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.stack([self(im, train=train, generator=generator) for im in images])

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
