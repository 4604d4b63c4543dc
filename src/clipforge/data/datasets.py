"""Datasets for evaluation: labelled images for classification, captioned images for retrieval.

Sources:
* a folder of class sub-folders (``root/cat/x.jpg``), class names from the folder names;
* a CSV/TSV with an image column and a label column (classification) or a caption column
  (retrieval; an image listed on several rows has several captions);
* webdataset shards with ``cls`` (class index) or ``txt`` entries;
* built-in names: ``synthetic`` (the demo's scenes; label = "colour shape") and ``digits``
  (scikit-learn's bundled 8x8 handwritten digits, upscaled to 32x32 PNGs; no download).

Built-ins are written once under the cache folder (``$CLIPFORGE_CACHE`` or ``~/.cache/clipforge``).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from clipforge.data.pairs import IMAGE_SUFFIXES
from clipforge.data.shards import is_shard_source
from clipforge.errors import DataError

if TYPE_CHECKING:
    import torch

BUILTIN = ("synthetic", "digits")
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass
class LabelledImages:
    """Images with integer labels into ``classes``; ``name`` identifies the data for caching."""

    name: str
    images: list[str]
    labels: list[int]
    classes: list[str]
    missing: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: list[int], name: str) -> LabelledImages:
        return LabelledImages(name, [self.images[i] for i in indices], [self.labels[i] for i in indices], self.classes)


@dataclass
class CaptionedImages:
    """Unique images and captions; ``text_to_image[j]`` is the image of caption j."""

    name: str
    images: list[str]
    captions: list[str]
    text_to_image: list[int]


def cache_dir() -> Path:
    return Path(os.environ.get("CLIPFORGE_CACHE", Path.home() / ".cache" / "clipforge"))


def load_classification(source: str, split: str = "test", image_column: str = "image", label_column: str = "label",
                        classes: list[str] | None = None) -> LabelledImages:
    """A labelled image set from a built-in name, a class-folder tree, a CSV or shards."""
    if source in BUILTIN:
        return _builtin(source, split)
    path = Path(source)
    if path.is_dir():
        return _from_folder(path, classes)
    if path.suffix.lower() in (".csv", ".tsv"):
        return _from_csv(path, image_column, label_column, classes)
    if is_shard_source(source):
        return _from_shards(source, classes)
    raise DataError(f"{source}: expected a built-in name ({', '.join(BUILTIN)}), a folder of class sub-folders, "
                    "a CSV/TSV file or webdataset shards")


def folder_class_name(folder: str) -> str:
    """``red_circle`` or ``red-circle`` -> ``red circle``: folder names become words in prompts."""
    return " ".join(folder.replace("_", " ").replace("-", " ").split())


def _from_folder(root: Path, classes: list[str] | None) -> LabelledImages:
    found = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not found:
        raise DataError(f"{root}: no class sub-folders (expected root/<class>/<image>)")
    if classes:
        # Given class names match a folder as spelled or as read (underscores and hyphens as spaces).
        index = {c: i for i, c in enumerate(classes)} | {folder_class_name(c): i for i, c in enumerate(classes)}
        classes = list(classes)
    else:
        classes = [folder_class_name(f) for f in found]
        index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(f for f in found if f not in index and folder_class_name(f) not in index)
    if unknown:
        raise DataError(f"{root}: sub-folders {unknown[:5]} are not among the given classes")
    images, labels = [], []
    for f in found:
        label = index.get(f, index.get(folder_class_name(f)))
        for p in sorted((root / f).rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                images.append(str(p))
                labels.append(label)
    if not images:
        raise DataError(f"{root}: its {len(found)} class sub-folders hold no images "
                        f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    return LabelledImages(str(root), images, labels, classes)


def _from_csv(path: Path, image_column: str, label_column: str, classes: list[str] | None) -> LabelledImages:
    if not path.is_file():
        raise DataError(f"{path}: no such CSV file")
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f, delimiter=sep)
        for col in (image_column, label_column):
            if col not in (reader.fieldnames or []):
                raise DataError(f"{path}: no column {col!r}; the header has {reader.fieldnames}")
        rows = [(r[image_column], (r[label_column] or "").strip()) for r in reader]
    if not rows:
        raise DataError(f"{path}: no rows below the header")
    found = sorted({lab for _, lab in rows})
    if classes:
        unseen = sorted(set(found) - set(classes))
        if unseen:
            raise DataError(f"{path}: label(s) {unseen[:5]} in column {label_column!r} are not among the "
                            f"{len(classes)} given classes (e.g. {classes[:3]})")
    else:
        classes = found
    images, labels, missing = [], [], []
    for img, lab in rows:
        p = Path(img) if Path(img).is_absolute() else path.parent / img
        if not p.is_file():
            missing.append(str(p))
            continue
        images.append(str(p))
        labels.append(classes.index(lab))
    if not images:
        raise DataError(f"{path}: none of its {len(rows)} images exist (e.g. {missing[0]})")
    return LabelledImages(str(path), images, labels, list(classes), missing)


def _from_shards(source: str, classes: list[str] | None) -> LabelledImages:
    """Shards with ``cls`` entries: images are extracted to the cache once."""
    import hashlib

    import webdataset as wds

    from clipforge.data.shards import IMAGE_KEYS, expand_urls

    out = cache_dir() / "shards" / hashlib.sha1(source.encode()).hexdigest()[:16]
    out.mkdir(parents=True, exist_ok=True)
    images, labels = [], []
    for sample in wds.DataPipeline(wds.SimpleShardList(expand_urls(source)), wds.tarfile_to_samples()):
        key = next((k for k in IMAGE_KEYS if k in sample), None)
        if key is None or "cls" not in sample:
            continue
        p = out / f"{sample['__key__']}.{key}"
        if not p.is_file():
            p.write_bytes(sample[key])
        images.append(str(p))
        labels.append(int(sample["cls"].decode().strip()))
    if not images:
        raise DataError(f"{source}: no samples with an image and a cls entry")
    n = max(labels) + 1
    return LabelledImages(source, images, labels, list(classes) if classes else [str(i) for i in range(n)])


def load_retrieval(source: str, image_column: str = "image", caption_column: str = "caption",
                   separator: str | None = None, caption_split: str | None = None) -> CaptionedImages:
    """Image-caption pairs (CSV, folder of x.jpg + x.txt, or ``synthetic``) grouped by image.
    ``caption_split``: a row's caption holds alternatives separated by it; the first is kept."""
    from clipforge.data.pairs import caption_options, read_pairs

    name = source
    if source == "synthetic":
        source = str(synthetic_root() / "val.csv")
    pairs, skipped = read_pairs(source, image_column, caption_column, separator)
    if not pairs:
        why = f" ({len(skipped)} row(s) skipped, e.g. {skipped[0].source}: {skipped[0].reason})" if skipped else ""
        raise DataError(f"{source}: no image-caption pairs{why}")
    images: dict[str, int] = {}
    captions, t2i = [], []
    for p in pairs:
        idx = images.setdefault(p.image, len(images))
        caption = caption_options(p.caption, caption_split)[0] if p.caption else p.caption
        for cap in caption.split("\n") if caption else []:
            if cap.strip():
                captions.append(cap.strip())
                t2i.append(idx)
    return CaptionedImages(name, list(images), captions, t2i)


def synthetic_root() -> Path:
    from clipforge.data.synthetic import SynthConfig, write_dataset

    root = cache_dir() / "synthetic"
    if not (root / "meta.json").is_file():
        write_dataset(root, SynthConfig(n_train=10000, n_val=1000, n_zeroshot_per_class=20), progress=False)
    return root


def _builtin(name: str, split: str) -> LabelledImages:
    if name == "synthetic":
        from clipforge.data.synthetic import class_names

        root = synthetic_root()
        csv_name = {"test": "zeroshot_heldout.csv", "heldout": "zeroshot_heldout.csv", "seen": "zeroshot_seen.csv",
                    "train": "zeroshot_seen.csv"}.get(split)
        if csv_name is None:
            raise DataError(f"synthetic has splits train/seen, test/heldout; got {split!r}")
        ds = _from_csv(root / csv_name, "image", "label", class_names())
        ds.name = f"synthetic/{split}"
        return ds
    return digits(split)


def digits(split: str = "test", test_fraction: float = 0.3, seed: int = 0) -> LabelledImages:
    """scikit-learn's 1,797 handwritten digits, written as 32x32 PNGs; a fixed stratified split."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise DataError(f"digits has splits train and test; got {split!r}")
    data = load_digits()
    root = cache_dir() / "digits"
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(data.images):
        p = root / f"{i:04d}.png"
        if not p.is_file():
            arr = (255 - img * 255 / 16).clip(0, 255).astype(np.uint8)  # dark ink on white, like paper
            Image.fromarray(arr).resize((32, 32), Image.Resampling.BICUBIC).convert("RGB").save(p)
        paths.append(str(p))
    idx = np.arange(len(paths))
    train_idx, test_idx = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=data.target)
    chosen = sorted(train_idx if split == "train" else test_idx)
    return LabelledImages(f"digits/{split}", [paths[i] for i in chosen], [int(data.target[i]) for i in chosen],
                          list(DIGIT_NAMES))


def pixel_features(images: list[str], size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw pixels (resized to size x size, RGB, in [0, 1]) as features: the linear-probe baseline."""
    import numpy as np
    import torch
    from PIL import Image

    from clipforge.errors import ImageReadError
    from clipforge.images.decode import open_image

    feats, idx = [], []
    for i, p in enumerate(images):
        try:
            img = open_image(p).resize((size, size), Image.Resampling.BICUBIC)
        except ImageReadError:
            continue
        feats.append(torch.from_numpy(np.asarray(img, dtype=np.float32).reshape(-1) / 255.0))
        idx.append(i)
    return torch.stack(feats), torch.tensor(idx)
