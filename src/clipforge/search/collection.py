"""The items of a collection to embed: a folder of images, a CSV (image[, caption]) or shards."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from clipforge.data.pairs import IMAGE_SUFFIXES, DataError


@dataclass(frozen=True)
class Item:
    path: str
    caption: str = ""


def list_items(source: str, image_column: str = "image", caption_column: str = "caption") -> list[Item]:
    """Items in a stable order (sorted paths for folders, file order for CSVs and shards)."""
    p = Path(source)
    if p.is_dir():
        items = []
        for img in sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES):
            txt = img.with_suffix(".txt")
            items.append(Item(str(img), txt.read_text(errors="replace").strip() if txt.is_file() else ""))
        if not items:
            raise DataError(f"{p}: no images found")
        return items
    if p.suffix.lower() in (".csv", ".tsv"):
        if not p.is_file():
            raise DataError(f"{p}: no such CSV file")
        with open(p, newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.DictReader(f, delimiter="\t" if p.suffix.lower() == ".tsv" else ",")
            if image_column not in (reader.fieldnames or []):
                raise DataError(f"{p}: no image column {image_column!r}; the header has {reader.fieldnames}")
            rows = list(reader)
        out = []
        for r in rows:
            img = Path(r[image_column] or "")
            out.append(Item(str(img if img.is_absolute() else p.parent / img), (r.get(caption_column) or "").strip()))
        return out
    if ".tar" in source:
        from clipforge.evaluation.datasets import load_classification

        return [Item(path) for path in load_classification(source).images]
    raise DataError(f"{source}: expected a folder of images, a CSV/TSV file or webdataset shards")
