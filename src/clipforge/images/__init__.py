"""Image decoding and preprocessing with Pillow (no torchvision)."""

from clipforge.images.decode import open_image
from clipforge.images.preprocess import OPENAI_MEAN, OPENAI_STD, Preprocess, RandomResizedCrop

__all__ = ["OPENAI_MEAN", "OPENAI_STD", "Preprocess", "RandomResizedCrop", "open_image"]
