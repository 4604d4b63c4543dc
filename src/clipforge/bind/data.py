"""Rows to bind: a CSV with an image column, a caption column and a column of the modality's files
(``clipforge data synth --modalities speech,depth`` writes ``speech`` and ``depth`` columns).
Paths are relative to the CSV's folder unless absolute. A row with an empty field is skipped and
counted; a file that cannot be read is skipped when it is reached, counted by reason."""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from clipforge.bind.inputs import ModalityReadError
from clipforge.data.pairs import Skipped, find_column
from clipforge.errors import DataError


@dataclass
class BindRows:
    """The usable rows of a CSV: parallel lists of image path, caption and modality file."""

    images: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.files)


def read_bind_csv(path: str | Path, modality: str, column: str | None = None, image_column: str | None = None,
                  caption_column: str | None = None) -> BindRows:
    """Rows of ``path`` with a file in the modality's column (named ``column``, default the modality's
    name) and, when the header has them, an image and a caption."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such CSV file")
    rows = BindRows()
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        col = find_column(columns, column, (modality,), modality, str(path))
        img = find_column(columns, image_column, ("image", "filepath"), "image", str(path), required=False)
        cap = find_column(columns, caption_column, ("caption", "text"), "caption", str(path), required=False)
        for row_no, row in enumerate(reader, start=2):
            where = f"{path}:{row_no}"
            values = {c: (row.get(c) or "").strip() for c in (col, img) if c}
            if None in row or any(not v for v in values.values()):
                rows.skipped.append(Skipped("unreadable row", where, "an empty or missing field"))
                continue
            rows.files.append(_resolve(path, values[col]))  # type: ignore[index]
            rows.images.append(_resolve(path, values[img]) if img else "")
            rows.captions.append((row.get(cap) or "") if cap else "")
    if not rows.files:
        raise DataError(f"{path}: no usable rows with a {modality} file ({len(rows.skipped)} skipped)")
    return rows


def _resolve(csv_path: Path, value: str) -> str:
    p = Path(value)
    return str(p if p.is_absolute() else csv_path.parent / p)


@dataclass
class ModalityBatch:
    indices: torch.Tensor  # rows of the dataset in this batch
    inputs: torch.Tensor  # [n, ...] the encoder's inputs
    skipped: list[Skipped]
    notes: Counter

    def __len__(self) -> int:
        return int(self.indices.shape[0])


class ModalityFiles(Dataset):
    """``files[i]`` read by ``reader`` (a :mod:`clipforge.bind.inputs` reader) -> (i, tensor, notes),
    or a :class:`Skipped` when the file cannot be used. The tensor is rounded to float16 precision
    (the cache's), whether or not it is cached."""

    def __init__(self, files: list[str], reader: Any, cache: bool = False) -> None:
        self.files, self.reader = files, reader
        # Inputs kept as float16 after their first read (in this process): later epochs skip decoding.
        self.cache: dict[int, Any] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Any:
        if self.cache is not None and i in self.cache:
            kept = self.cache[i]
            return kept if isinstance(kept, Skipped) else (i, kept[0].float(), kept[1])
        try:
            x, notes = self.reader(self.files[i])
        except ModalityReadError as e:
            out: Any = Skipped(e.reason, self.files[i], str(e))
            if self.cache is not None:
                self.cache[i] = out
            return out
        # Inputs are always rounded to float16, cached or not, so a run gives the same model whether
        # an input came from the cache or the file (resume, workers).
        x = x.half()
        if self.cache is not None:
            self.cache[i] = (x, notes)
        return i, x.float(), notes


def collate_modality(items: list[Any]) -> ModalityBatch:
    good = [it for it in items if not isinstance(it, Skipped)]
    notes: Counter = Counter(n.split(" from ")[0] for _, _, ns in good for n in ns)
    skipped = [it for it in items if isinstance(it, Skipped)]
    if not good:
        return ModalityBatch(torch.empty(0, dtype=torch.long), torch.empty(0), skipped, notes)
    return ModalityBatch(torch.tensor([i for i, _, _ in good]), torch.stack([x for _, x, _ in good]), skipped, notes)
