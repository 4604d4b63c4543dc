"""The items of a collection to embed: a folder of images, a CSV (image[, caption]) or webdataset shards.

A shard's images are not extracted: an item records the shard, the member's name and its byte range
inside the tar, so embedding and serving read the image straight from the shard. Every path is
recorded resolved (absolute, symlinks followed), so the collection is served from wherever the
server starts, and the collection's root (the folder all items lie in) bounds what is served.
"""

from __future__ import annotations

import csv
import logging
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from clipforge.data.pairs import CAPTION_COLUMNS, IMAGE_COLUMNS, IMAGE_SUFFIXES, DataError, find_column
from clipforge.data.shards import CAPTION_KEYS, IMAGE_KEYS, expand_urls, is_shard_source

log = logging.getLogger(__name__)


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


@dataclass
class Collection:
    items: list[Item]
    root: str  # the resolved folder every item lies in
    skipped: list[dict] = field(default_factory=list)  # rows left out before embedding: {"row", "reason"}


def source_key(source: str) -> str:
    """``source`` as recorded in a manifest: a local path made absolute (the same run from any folder)."""
    return source if "://" in source else os.path.abspath(source)


def read_collection(source: str, image_column: str | None = None, caption_column: str | None = None) -> Collection:
    """Items in a stable order (sorted paths for folders, file order for CSVs and shards).

    CSV columns: ``image_column``/``caption_column`` when given, else the one known name the header
    has (``image``, open_clip's ``filepath``, ...; ``caption``, ``title``, ``text``). A row without
    its image path or, when the header has a caption column, without that field, is skipped.
    """
    p = Path(source)
    if p.is_dir():
        items = []
        for img in sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES):
            txt = img.with_suffix(".txt")
            items.append(Item(os.path.realpath(img), txt.read_text(errors="replace").strip() if txt.is_file() else ""))
        if not items:
            raise DataError(f"{p}: no images found")
        return Collection(items, os.path.realpath(p))
    if p.suffix.lower() in (".csv", ".tsv"):
        return _read_csv(p, image_column, caption_column)
    if is_shard_source(source):
        shards = [os.path.realpath(u) if "://" not in u else u for u in expand_urls(source)]
        items = [item for url in shards for item in _shard_items(url)]
        if not items:
            raise DataError(f"{source}: no images in the shards")
        local = [os.path.dirname(u) for u in shards if "://" not in u]
        return Collection(items, os.path.commonpath(local) if local else "")
    raise DataError(f"{source}: expected a folder of images, a CSV/TSV file or webdataset shards")


def _read_csv(p: Path, image_column: str | None, caption_column: str | None) -> Collection:
    if not p.is_file():
        raise DataError(f"{p}: no such CSV file")
    base = os.path.realpath(p.parent)
    with open(p, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f, delimiter="\t" if p.suffix.lower() == ".tsv" else ",")
        columns = list(reader.fieldnames or [])
        image_col = find_column(columns, image_column, IMAGE_COLUMNS, "image", str(p))
        caption_col = find_column(columns, caption_column, CAPTION_COLUMNS, "caption", str(p), required=False)
        items, skipped = [], []
        for row_no, r in enumerate(reader, start=2):  # row 1 is the header
            image = (r.get(image_col) or "").strip()
            if not image:
                skipped.append({"row": f"{p}:{row_no}", "reason": "no image path"})
                continue
            caption = r.get(caption_col) if caption_col else ""
            if caption is None:
                skipped.append({"row": f"{p}:{row_no}", "reason": f"no {caption_col!r} field"})
                continue
            items.append(Item(os.path.realpath(os.path.join(base, image)), caption.strip()))
    if skipped:
        log.warning(f"{p}: {len(skipped)} row(s) skipped (first: {skipped[0]['row']}, {skipped[0]['reason']}); "
                    "they are listed in the embeddings folder's skipped-rows.jsonl")
    folders = {os.path.dirname(i.path) for i in items}
    return Collection(items, os.path.commonpath([base, *folders]) if items else base, skipped)


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
        log.warning(f"{shard}: unreadable after {len(images)} images ({e}); the rest is skipped")
    return [Item(shard, captions.get(k, ""), images[k].name, images[k].offset_data, images[k].size) for k in order]
