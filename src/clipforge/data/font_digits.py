"""Digits typeset in the system's fonts, made to look like scikit-learn's handwritten digits: a
distribution shift of the built-in ``digits`` set (printed instead of handwritten).

Each digit is drawn in a font (DejaVu and Liberation families on Debian) with a small random
rotation, scale and offset, reduced to 8x8 with 17 grey levels (0..16) as the UCI digits were, and
written as the built-in set writes its images (dark ink on white, 32x32).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from clipforge.data.datasets import DIGIT_NAMES, LabelledImages
from clipforge.errors import DataError
from clipforge.images.fonts import system_fonts

FONT_STEMS = ("dejavusans", "dejavusans-bold", "dejavuserif", "dejavuserif-bold", "dejavusansmono",
              "dejavusans-oblique", "liberationsans-regular", "liberationserif-regular", "liberationmono-regular",
              "liberationsans-bold", "liberationserif-italic")


def available_fonts() -> list[str]:
    fonts = system_fonts()
    return [fonts[s] for s in FONT_STEMS if s in fonts]


def render_digit(digit: int, font_path: str, rng: np.random.Generator) -> np.ndarray:
    """An 8x8 array of 0..16 (ink = high), as scikit-learn's ``load_digits().images``."""
    from PIL import ImageFont

    canvas = Image.new("L", (64, 64), 0)
    font = ImageFont.truetype(font_path, int(rng.uniform(40, 52)))
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = draw.textbbox((0, 0), str(digit), font=font)
    x = (64 - (right - left)) / 2 - left + rng.uniform(-3, 3)
    y = (64 - (bottom - top)) / 2 - top + rng.uniform(-3, 3)
    # Handwritten strokes are thick at this scale: draw with an outline of the ink's own colour.
    draw.text((x, y), str(digit), fill=255, font=font, stroke_width=int(rng.integers(1, 3)), stroke_fill=255)
    canvas = canvas.rotate(rng.uniform(-10, 10), resample=Image.Resampling.BILINEAR)
    # The UCI digits are centred in their box and cover most of it: crop to the ink, pad to square.
    box = canvas.getbbox() or (0, 0, 64, 64)
    ink = canvas.crop(box)
    side = max(ink.size) + 2
    square = Image.new("L", (side, side), 0)
    square.paste(ink, ((side - ink.size[0]) // 2, (side - ink.size[1]) // 2))
    small = np.asarray(square.resize((8, 8), Image.Resampling.BOX), dtype=np.float64)
    return np.round(small / 255 * 16)


def font_digits(out_dir: str | Path, per_digit: int = 30, seed: int = 0) -> LabelledImages:
    """``per_digit`` typeset images of each digit under ``out_dir`` (and ``labels.csv``)."""
    fonts = available_fonts()
    if not fonts:
        raise DataError("no DejaVu or Liberation font found under /usr/share/fonts (Debian: apt install "
                        "fonts-dejavu-core fonts-liberation)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for d in range(10):
        for i in range(per_digit):
            arr = render_digit(d, fonts[(d + i) % len(fonts)], rng)
            pixels = (255 - arr * 255 / 16).clip(0, 255).astype(np.uint8)  # as datasets.digits writes them
            p = out / f"{d}_{i:03d}.png"
            Image.fromarray(pixels).resize((32, 32), Image.Resampling.BICUBIC).convert("RGB").save(p)
            images.append(str(p))
            labels.append(d)
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label"])
        w.writerows([(Path(p).name, DIGIT_NAMES[y]) for p, y in zip(images, labels)])
    return LabelledImages("digits/fonts", images, labels, list(DIGIT_NAMES))
