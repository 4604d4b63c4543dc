"""The synthetic scenes' objects, each cut out of its scene at its grid cell: a self-supervised
evaluation the scenes can pass.

Whole 64 px scenes shrunk to 32 px leave a shape 3-5 pixels across on a textured background, and
every feature, raw pixels included, is near chance on "which shape". Cut at the object's cell, the
shape fills the crop, so a representation that encodes shape can show it. The training crops come
from the scenes' training split (no labels used); the labelled crops from the single-object
zero-shot splits (seen and held-out combinations), labelled by shape and by colour.

Everything is written once under ``cache_dir()/synthetic-objects`` from the built-in scenes.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from PIL import Image

from clipforge.data.datasets import cache_dir, synthetic_root
from clipforge.data.synthetic import POSITIONS, SynthConfig, scene_objects

CROP_FRACTION = 0.4  # of the scene's side: the cell (1/3) plus the position jitter and a margin
TRAIN_SCENES = 4000  # of the training split's 10,000: about 6,800 object crops
VERSION = 1


def crop_box(position: str, side: int) -> tuple[int, int, int, int]:
    """The square around a grid cell's centre, ``CROP_FRACTION`` of the side, moved inside the image."""
    row, col = divmod(POSITIONS.index(position), 3)
    w = round(CROP_FRACTION * side)
    cx, cy = (col + 0.5) * side / 3, (row + 0.5) * side / 3
    x0 = min(max(0, round(cx - w / 2)), side - w)
    y0 = min(max(0, round(cy - w / 2)), side - w)
    return x0, y0, x0 + w, y0 + w


def objects_root() -> Path:
    """The built-in scenes' crops, written once (``train/*.png``; ``labelled.csv``: image, shape, colour)."""
    root = cache_dir() / "synthetic-objects"
    meta = root / "meta.json"
    if not (meta.is_file() and json.loads(meta.read_text()).get("version") == VERSION):
        write_object_crops(synthetic_root(), root, TRAIN_SCENES)
    return root


def write_object_crops(scenes: Path, root: Path, train_scenes: int) -> dict[str, int]:
    """Cut every object of the first ``train_scenes`` training scenes and of the zero-shot splits of
    the dataset written by ``clipforge.data.synthetic.write_dataset`` at ``scenes``."""
    (root / "train").mkdir(parents=True, exist_ok=True)
    config = SynthConfig(**json.loads((scenes / "meta.json").read_text())["config"])
    n = 0
    for i, objs in enumerate(scene_objects("train", config)[:train_scenes]):
        with Image.open(scenes / "images" / "train" / f"{i:06d}.png") as f:
            scene = f.convert("RGB")
        for k, obj in enumerate(objs):
            scene.crop(crop_box(obj.position, scene.width)).save(root / "train" / f"{i:06d}_{k}.png",
                                                                 compress_level=1)
            n += 1
    rows = []
    for split in ("zeroshot_seen", "zeroshot_heldout"):
        (root / split).mkdir(exist_ok=True)
        with open(scenes / f"{split}.csv", newline="") as f:
            for r in csv.DictReader(f):
                out = f"{split}/{Path(r['image']).name}"
                with Image.open(scenes / r["image"]) as scene:
                    scene.convert("RGB").crop(crop_box(r["position"], scene.width)).save(root / out,
                                                                                        compress_level=1)
                colour, shape = r["label"].split()
                rows.append({"image": out, "shape": shape, "colour": colour})
    tmp = root / ".labelled.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "shape", "colour"])
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(root / "labelled.csv")
    counts = {"train_crops": n, "labelled": len(rows)}
    (root / "meta.json").write_text(json.dumps({"version": VERSION, **counts, "crop_fraction": CROP_FRACTION}))
    return counts


def training_crops() -> list[str]:
    return sorted(str(p) for p in (objects_root() / "train").glob("*.png"))


def labelled_crops() -> list[dict[str, str]]:
    """Rows of image (absolute path), shape and colour."""
    root = objects_root()
    with open(root / "labelled.csv", newline="") as f:
        return [{**r, "image": str(root / r["image"])} for r in csv.DictReader(f)]
