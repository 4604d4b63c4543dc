"""The items of a collection to embed: a folder of images, a CSV (image[, caption]) or webdataset shards.

A shard's images are not extracted: an item records the shard, the member's name and its byte range
inside the tar, so embedding and serving read the image straight from the shard.
"""

from __future__ import annotations

import csv
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from clipforge.data.pairs import IMAGE_SUFFIXES, DataError
from clipforge.data.shards import CAPTION_KEYS, IMAGE_KEYS, expand_urls, is_shard_source


@dataclass(frozen=True)
class Item:
    """An image file (``member`` empty) or a member of the tar ``path`` at ``offset`` (``size`` bytes)."""

    path: str
    caption: str = ""
    member: str = ""
    offset: int = -1
    size: int = -1

    @property
    def name(self) -> str:
        return f"{self.path}#{self.member}" if self.member else self.path


def read_item_bytes(path: str, member: str = "", offset: int = -1, size: int = -1) -> bytes:
    """The image's bytes: the file, or the byte range of a shard member."""
    if not member:
        return Path(path).read_bytes()
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    if len(data) != size:
        raise OSError(f"{path}#{member}: shard shorter than recorded (was it rewritten?)")
    return data


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
    if is_shard_source(source):
        items = [item for url in expand_urls(source) for item in _shard_items(url)]
        if not items:
            raise DataError(f"{source}: no images in the shards")
        return items
    raise DataError(f"{source}: expected a folder of images, a CSV/TSV file or webdataset shards")


def _shard_items(shard: str) -> list[Item]:
    """One item per sample key with an image member; the caption from its ``txt``/``caption`` member."""
    images: dict[str, tarfile.TarInfo] = {}
    captions: dict[str, str] = {}
    order: list[str] = []
    try:
        with tarfile.open(shard, "r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                folder, _, base = m.name.rpartition("/")
                stem, _, ext = base.partition(".")
                key = f"{folder}/{stem}" if folder else stem
                if ext.lower() in IMAGE_KEYS and key not in images:
                    images[key] = m
                    order.append(key)
                elif ext.lower() in CAPTION_KEYS:
                    f = tar.extractfile(m)
                    captions[key] = f.read().decode("utf-8", errors="replace").strip() if f else ""
    except (tarfile.TarError, OSError) as e:
        if not images:
            raise DataError(f"{shard}: not a readable tar shard ({e})") from None
        print(f"warning: {shard}: unreadable after {len(images)} images ({e}); the rest is skipped",
              file=sys.stderr)
    return [Item(shard, captions.get(k, ""), images[k].name, images[k].offset_data, images[k].size) for k in order]
