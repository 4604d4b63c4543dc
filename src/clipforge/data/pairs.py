"""Image-text pairs from a CSV/TSV file or from a folder of images with same-named ``.txt`` files.

Reading a source gives a list of :class:`Pair` plus the rows that could not be read; a
:class:`PairDataset` decodes, preprocesses and tokenizes each pair and returns a
:class:`Skipped` record instead of raising when a sample is bad (missing file, corrupt image,
empty caption), so a long job goes on and reports what it skipped.
"""

from __future__ import annotations

import csv
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from clipforge.errors import DataError, ImageReadError
from clipforge.images.preprocess import Preprocess

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class Pair:
    image: str  # absolute path, or a key inside a shard
    caption: str


@dataclass(frozen=True)
class Skipped:
    """A sample that was left out, and why."""

    reason: str
    source: str
    detail: str = ""


def caption_options(caption: str, split: str | None) -> list[str]:
    """The captions one cell holds: split by ``split`` (``data.caption_split``), stripped, none empty."""
    if not split:
        return [caption]
    return [c for c in (c.strip() for c in caption.split(split)) if c] or [caption]


def sample_seed(seed: int, epoch: int, key: object) -> int:
    """A seed for one sample's augmentation, stable across processes (unlike ``hash`` of a str)."""
    return zlib.crc32(f"{seed}/{epoch}/{key}".encode()) & 0x7FFFFFFF


@dataclass
class Sample:
    index: int
    image: torch.Tensor
    tokens: torch.Tensor


# Column names other tools write: clipforge's own, open_clip's (``filepath``/``title``), and common
# spellings; img2dataset's ``url`` is a download address, not a local file, so it is not guessed.
IMAGE_COLUMNS = ("image", "filepath", "image_path", "path", "file", "filename")
CAPTION_COLUMNS = ("caption", "title", "text")


def find_column(columns: list[str], given: str | None, candidates: tuple[str, ...], what: str, where: str,
                required: bool = True) -> str | None:
    """The column to read: ``given`` (which must exist), else the one known name the header has.

    Several known names, or none when ``required``, is an error naming the header and the option.
    """
    if given is not None:
        if given not in columns:
            raise DataError(f"{where}: no {what} column {given!r}; the header has {columns} "
                            f"(set --{what}-column or data.{what}_column)")
        return given
    found = [c for c in candidates if c in columns]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise DataError(f"{where}: the header has several {what} columns {found}; choose one with --{what}-column")
    if required:
        raise DataError(f"{where}: no {what} column (looked for {list(candidates)}); the header has {columns} "
                        f"(set --{what}-column or data.{what}_column)")
    return None


def read_csv_pairs(
    path: str | Path, image_column: str = "image", caption_column: str = "caption", separator: str | None = None
) -> tuple[list[Pair], list[Skipped]]:
    """Pairs from a CSV (or TSV: chosen by ``separator`` or the ``.tsv`` suffix).

    Image paths are relative to the file's folder unless absolute. Rows with a missing field are
    returned as skipped; a missing column is an error naming the columns that exist.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such CSV file")
    sep = separator or ("\t" if path.suffix.lower() in (".tsv", ".tab") else ",")
    pairs, skipped = [], []
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f, delimiter=sep)
        columns = reader.fieldnames or []
        for col, what in ((image_column, "image"), (caption_column, "caption")):
            find_column(list(columns), col, (), what, str(path))
        for row_no, row in enumerate(reader, start=2):  # row 1 is the header
            image, caption = row.get(image_column), row.get(caption_column)
            where = f"{path}:{row_no}"
            if image is None or caption is None or None in row:
                skipped.append(Skipped("unreadable row", where, "wrong number of fields"))
            elif not image.strip():
                skipped.append(Skipped("unreadable row", where, "empty image path"))
            else:
                image_path = Path(image.strip())
                if not image_path.is_absolute():
                    image_path = path.parent / image_path
                pairs.append(Pair(str(image_path), caption))
    return pairs, skipped


def read_folder_pairs(folder: str | Path) -> tuple[list[Pair], list[Skipped]]:
    """Pairs from a folder (searched recursively) where ``x.jpg`` has its caption in ``x.txt``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    pairs, skipped = [], []
    for image in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        txt = image.with_suffix(".txt")
        if not txt.is_file():
            skipped.append(Skipped("missing caption", str(image), f"no {txt.name}"))
            continue
        pairs.append(Pair(str(image), txt.read_text(encoding="utf-8", errors="replace").strip()))
    return pairs, skipped


def read_pairs(source: str | Path, image_column: str = "image", caption_column: str = "caption",
               separator: str | None = None) -> tuple[list[Pair], list[Skipped]]:
    """Pairs from a CSV/TSV file or a captioned image folder, chosen by what ``source`` is."""
    p = Path(source)
    if p.is_dir():
        return read_folder_pairs(p)
    return read_csv_pairs(p, image_column, caption_column, separator)


class PairDataset(Dataset):
    """Decodes, preprocesses and tokenizes pairs; a bad sample comes back as :class:`Skipped`.

    Args:
        pairs: the samples.
        preprocess: the model's image preprocessing.
        tokenizer: list of strings -> int64 [N, L].
        train: use the random training crop.
        seed: with ``epoch`` (see :meth:`set_epoch`), seeds each sample's augmentation, so
            augmentations do not depend on worker count or on resuming.
        caption_split: each caption holds alternatives separated by this string; training draws
            one per sample and epoch (from the same seed), otherwise the first is used.
    """

    def __init__(self, pairs: list[Pair], preprocess: Preprocess, tokenizer: Callable, train: bool = False,
                 seed: int = 0, caption_split: str | None = None) -> None:
        self.pairs = pairs
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.train = train
        self.seed = seed
        self.caption_split = caption_split
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample | Skipped:
        pair = self.pairs[index]
        if not pair.caption or not pair.caption.strip():
            return Skipped("empty caption", pair.image)
        try:
            gen = None
            if self.train:
                gen = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, index))
            image = self.preprocess(pair.image, train=self.train, generator=gen)
        except ImageReadError as e:
            reason = "missing image" if "no such image file" in str(e) else "unreadable image"
            return Skipped(reason, pair.image, str(e).removeprefix(f"{pair.image}: "))
        caption = pair.caption
        if self.caption_split:
            options = caption_options(caption, self.caption_split)
            caption = options[int(torch.randint(len(options), (1,), generator=gen))] if gen else options[0]
        return Sample(index, image, self.tokenizer([caption])[0])


@dataclass
class Batch:
    indices: torch.Tensor
    images: torch.Tensor
    tokens: torch.Tensor
    skipped: list[Skipped]

    def __len__(self) -> int:
        return len(self.indices)


def collate(items: list[Sample | Skipped]) -> Batch:
    """Stack the good samples; carry the skipped ones along so the trainer can count them."""
    good = [s for s in items if isinstance(s, Sample)]
    skipped = [s for s in items if isinstance(s, Skipped)]
    if not good:
        return Batch(torch.empty(0, dtype=torch.long), torch.empty(0), torch.empty(0, dtype=torch.long), skipped)
    return Batch(
        torch.tensor([s.index for s in good]),
        torch.stack([s.image for s in good]),
        torch.stack([s.tokens for s in good]),
        skipped,
    )
