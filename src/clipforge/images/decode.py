"""Decode any image file to RGB, safely.

Every failure (missing, empty, truncated, not an image, a decompression bomb) raises
:class:`~clipforge.errors.ImageReadError` naming the file.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from clipforge.errors import ImageReadError

# Pillow's own default (about 89 Mpx); images beyond it are refused, not decoded.
DEFAULT_MAX_PIXELS = 89_478_485
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def open_image(
    source: str | os.PathLike | bytes | Image.Image,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    draft_size: int | None = None,
) -> Image.Image:
    """Open ``source`` (a path, raw bytes or a PIL image) and return a fully decoded RGB image.

    Palette and alpha images are composited over white (plain ``convert("RGB")`` exposes whatever
    colour the transparent pixels happen to hold); 16-bit images are scaled, not clipped; CMYK and
    greyscale are converted. ``draft_size``: a JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale
    whose sides stay at least that size (Pillow's draft mode), for callers that shrink it anyway.
    """
    if isinstance(source, Image.Image):
        return to_rgb(source)
    label = name or (f"<{len(source)} bytes>" if isinstance(source, bytes) else str(source))
    if not isinstance(source, bytes):
        path = Path(source)
        if not path.is_file():
            raise ImageReadError(f"{label}: no such image file")
        if path.stat().st_size == 0:
            raise ImageReadError(f"{label}: image file is empty (0 bytes)")
    elif len(source) == 0:
        raise ImageReadError(f"{label}: image data is empty (0 bytes)")
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    # Pillow's bomb check is a module global; hold it for this call only.
    old_limit = Image.MAX_IMAGE_PIXELS
    old_truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        Image.MAX_IMAGE_PIXELS = max_pixels
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                if draft_size and img.format == "JPEG":
                    img.draft("RGB", (draft_size, draft_size))
                img.load()
                return to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageReadError(
            f"{label}: refused as a possible decompression bomb "
            f"({_pixels(e)} pixels, limit {max_pixels})"
        ) from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{label}: not an image file (Pillow cannot identify it)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{label}: truncated or corrupt image ({e})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
        ImageFile.LOAD_TRUNCATED_IMAGES = old_truncated


def _pixels(e: Exception) -> str:
    # Pillow: "Image size (N pixels) exceeds limit of M pixels, ..."
    found = re.search(r"size \((\d+) pixels\)", str(e))
    return found.group(1) if found else "too many"


def _thirty_two_bit(img: Image.Image, arr: np.ndarray) -> tuple[np.ndarray, float]:
    """32-bit integer samples scaled by their type's range, as 16-bit ones are by 65535.

    Pillow holds them as int32, so unsigned TIFF samples above 2**31 arrive wrapped negative; the
    TIFF SampleFormat tag (339: 1 unsigned, 2 signed) says which they are.
    """
    tags = getattr(img, "tag_v2", None)
    fmt = tags.get(339, 1) if tags is not None else (2 if arr.min(initial=0) < 0 else 1)
    fmt = fmt[0] if isinstance(fmt, tuple) else fmt
    if fmt == 2:
        return np.clip(arr, 0, None), float(2**31 - 1)
    return np.mod(arr, 2.0**32), float(2**32 - 1)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB."""
    if img.mode == "RGB":
        return img.copy() if img.readonly else img
    if img.mode in _SIXTEEN_BIT or img.mode == "F":
        arr = np.asarray(img).astype(np.float64)
        if img.mode == "F":
            top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        elif arr.max(initial=0) > 65535 or arr.min(initial=0) < 0:
            arr, top = _thirty_two_bit(img, arr)
        else:
            top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        grey = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")
