from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from clipforge.errors import ImageReadError
from clipforge.images import Preprocess, RandomResizedCrop, open_image
from clipforge.images.preprocess import center_crop, resize_short_side


def _png(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["P", "RGBA", "CMYK", "L", "LA", "1", "I;16", "I", "F"])
def test_every_mode_becomes_rgb(mode: str) -> None:
    img = Image.new(mode, (10, 8))
    out = open_image(img)
    assert out.mode == "RGB" and out.size == (10, 8)


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    arr = np.full((4, 4), 32768, dtype=np.uint16)
    out = np.asarray(open_image(Image.fromarray(arr)))
    assert 127 <= out[0, 0, 0] <= 129  # half of full scale, not saturated to 255


def test_transparent_pixels_become_white() -> None:
    img = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert np.asarray(open_image(img))[0, 0].tolist() == [255, 255, 255]


def test_bad_files_name_the_file(tmp_path) -> None:
    good = _png(Image.new("RGB", (64, 64), (10, 20, 30)), "JPEG")
    cases = {"empty.jpg": b"", "text.jpg": b"hello, not an image", "truncated.jpg": good[: len(good) // 2]}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageReadError, match=name):
            open_image(tmp_path / name)
    with pytest.raises(ImageReadError, match="missing.png: no such image file"):
        open_image(tmp_path / "missing.png")


def test_decompression_bomb_is_refused(tmp_path) -> None:
    # A 4000x4000 single-colour PNG is a few KB on disk; with a 1 Mpx limit it is a bomb.
    (tmp_path / "bomb.png").write_bytes(_png(Image.new("L", (4000, 4000))))
    assert (tmp_path / "bomb.png").stat().st_size < 100_000
    with pytest.raises(ImageReadError, match="bomb.png: refused as a possible decompression bomb"):
        open_image(tmp_path / "bomb.png", max_pixels=1_000_000)
    assert open_image(tmp_path / "bomb.png", max_pixels=None).size == (4000, 4000)


def test_resize_and_crop_follow_torchvision_arithmetic() -> None:
    img = Image.new("RGB", (64, 48))
    resized = resize_short_side(img, 32)
    assert resized.size == (42, 32)  # long side int(32 * 64 / 48) = 42
    arr = np.zeros((32, 42, 3), dtype=np.uint8)
    arr[:, 5:37] = 255  # torchvision's crop starts at round((42 - 32) / 2) = 5
    assert np.asarray(center_crop(Image.fromarray(arr), 32)).min() == 255


def test_preprocess_normalises_with_mean_and_std() -> None:
    pre = Preprocess(image_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    out = pre(Image.new("RGB", (40, 20), (255, 0, 128)))
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out[:, 8, 8], torch.tensor([2.0, -2.0, (128 / 255 - 0.5) / 0.25]))


def test_random_crop_is_reproducible_and_within_scale() -> None:
    crop = RandomResizedCrop(32, scale=(0.9, 1.0))
    regions = [crop.region(100, 80, torch.Generator().manual_seed(s)) for s in range(20)]
    again = [crop.region(100, 80, torch.Generator().manual_seed(s)) for s in range(20)]
    assert regions == again
    for left, top, w, h in regions:
        assert 0.85 * 8000 <= w * h <= 1.02 * 8000
        assert left + w <= 100 and top + h <= 80
    pre = Preprocess(image_size=32)
    out = pre(Image.new("RGB", (100, 80)), train=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 32, 32)
