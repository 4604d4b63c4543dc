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


def test_bomb_message_gives_the_images_size_not_the_limit(tmp_path) -> None:
    (tmp_path / "bomb.png").write_bytes(_png(Image.new("L", (3000, 1000))))
    with pytest.raises(ImageReadError, match=r"\(3000000 pixels, limit 1000000\)"):
        open_image(tmp_path / "bomb.png", max_pixels=1_000_000)


def _tiff32(path, arr: np.ndarray, sample_format: int) -> None:
    """A minimal one-strip greyscale 32-bit TIFF (Pillow itself only writes signed ones)."""
    import struct

    h, w = arr.shape
    data = arr.astype("<u4" if sample_format == 1 else "<i4").tobytes()
    tags = [(256, 4, w), (257, 4, h), (258, 3, 32), (259, 3, 1), (262, 3, 1), (273, 4, 8),
            (277, 3, 1), (278, 4, h), (279, 4, len(data)), (339, 3, sample_format)]
    out = bytearray(b"II*\x00" + struct.pack("<I", 8 + len(data)) + data + struct.pack("<H", len(tags)))
    for tag, typ, val in tags:
        out += struct.pack("<HHIHH", tag, typ, 1, val, 0) if typ == 3 else struct.pack("<HHII", tag, typ, 1, val)
    path.write_bytes(bytes(out + struct.pack("<I", 0)))


@pytest.mark.parametrize(("sample_format", "top"), [(1, 2**32 - 1), (2, 2**31 - 1)])
def test_thirty_two_bit_tiffs_are_scaled_by_their_range(tmp_path, sample_format: int, top: int) -> None:
    ramp = np.linspace(0, top, 16 * 16).reshape(16, 16).astype(np.int64)
    _tiff32(tmp_path / "x.tif", ramp, sample_format)
    out = np.asarray(open_image(tmp_path / "x.tif"))[..., 0].astype(int)
    expected = np.floor(ramp / top * 255 + 0.5).astype(int)
    assert np.abs(out - expected).max() <= 1  # a ramp from black to white, not a white image
    assert out[0, 0] == 0 and out[-1, -1] == 255 and 120 <= out[8, 0] <= 135


def test_too_elongated_images_are_refused_before_resizing(tmp_path) -> None:
    # 321 bytes on disk, under the bomb limit, but its short side resized to 224 would be 448 Gpx.
    (tmp_path / "sliver.png").write_bytes(_png(Image.new("RGB", (2_000_000, 1))))
    assert (tmp_path / "sliver.png").stat().st_size < 10_000
    for train in (False, True):
        with pytest.raises(ImageReadError, match=r"sliver.png: 2000000x1 pixels is too elongated"):
            Preprocess(image_size=224)(tmp_path / "sliver.png", train=train)
    with pytest.raises(ImageReadError, match="too elongated"):
        resize_short_side(Image.new("RGB", (1, 20_000)), 224)
    # A wide panorama is fine.
    assert Preprocess(image_size=32)(Image.new("RGB", (1200, 100))).shape == (3, 32, 32)


def test_an_elongated_image_is_skipped_by_classify_and_training_data(tmp_path, capsys) -> None:
    import clipforge
    from clipforge.cli.main import main
    from clipforge.data.pairs import Pair, PairDataset, Skipped

    (tmp_path / "sliver.png").write_bytes(_png(Image.new("RGB", (2_000_000, 1))))
    Image.new("RGB", (40, 40), (200, 10, 10)).save(tmp_path / "ok.png")
    clipforge.save(clipforge.build("tiny-vit-32"), tmp_path / "m")
    assert main(["classify", "--model", str(tmp_path / "m"), "--labels", "cat,dog",
                 str(tmp_path / "sliver.png"), str(tmp_path / "ok.png")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any("sliver.png: skipped" in line and "too elongated" in line for line in out)
    assert str(tmp_path / "ok.png") in out  # the valid image in the same call still gets its result
    ds = PairDataset([Pair(str(tmp_path / "sliver.png"), "a sliver")], Preprocess(image_size=32),
                     lambda t: torch.zeros(len(t), 4, dtype=torch.long), train=True)
    assert isinstance(ds[0], Skipped) and "too elongated" in ds[0].detail
