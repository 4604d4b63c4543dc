"""``clipforge embed``: a collection -> L2-normalised float16 embeddings in parts, with metadata.

Layout of EMB_DIR::

    manifest.json            model, source, item count, part size, dimension
    part-00000.npy           float16 [n, D] image embeddings of items 0 .. part_size-1 (readable ones)
    part-00000.parquet       id, path, caption, width, height, sha1 of the file, for the same rows
    text-00000.npy           (with captions) float16 caption embeddings, same rows
    skipped-00000.jsonl      items of the part that could not be read, and why

Each part is written to temporary names and renamed, the .parquet last: a part exists only when it
is complete, so an interrupted run resumes at the first missing part and ends with the same files.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from clipforge.errors import ClipforgeError, ImageReadError
from clipforge.images.decode import open_image
from clipforge.models.clip import CLIP
from clipforge.search.collection import Item, list_items


def _save_npy(array: np.ndarray, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


@torch.no_grad()
def _embed_part(model: CLIP, items: list[Item], first_id: int, batch_size: int, captions: bool):
    feats, rows, texts, skipped = [], [], [], []
    images: list[torch.Tensor] = []

    def flush() -> None:
        if images:
            feats.append(model.encode_image(torch.stack(images), normalize=True).float())
            images.clear()

    for offset, item in enumerate(items):
        try:
            data = Path(item.path).read_bytes()
            img = open_image(data, name=item.path)
        except (OSError, ImageReadError) as e:
            skipped.append({"id": first_id + offset, "path": item.path, "reason": str(e)})
            continue
        images.append(model.preprocess(img))
        rows.append({"id": first_id + offset, "path": item.path, "caption": item.caption, "width": img.width,
                     "height": img.height, "sha1": hashlib.sha1(data).hexdigest()})
        texts.append(item.caption)
        if len(images) == batch_size:
            flush()
    flush()
    dim = model.config.embed_dim
    image_emb = torch.cat(feats).numpy().astype(np.float16) if feats else np.zeros((0, dim), np.float16)
    text_emb = None
    if captions:
        from clipforge.evaluation.embed import embed_texts

        text_emb = embed_texts(model, texts).numpy().astype(np.float16) if texts else np.zeros((0, dim), np.float16)
    return image_emb, rows, text_emb, skipped


def embed_collection(model: CLIP, source: str, out_dir: str | Path, model_path: str = "", part_size: int = 10000,
                     batch_size: int = 64, captions: bool = False, progress: bool = True,
                     max_parts: int | None = None) -> Path:
    """Embed every item of ``source`` into ``out_dir`` (resuming where a previous run stopped)."""
    from clipforge.evaluation.cache import model_fingerprint
    from clipforge.utils.progress import progress_bar

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = list_items(source)
    manifest = {"source": str(source), "model": model_path, "model_fingerprint": model_fingerprint(model),
                "items": len(items), "part_size": part_size, "dim": model.config.embed_dim, "captions": captions,
                "preprocess": model.preprocess.to_dict()}
    mpath = out / "manifest.json"
    if mpath.is_file():
        old = json.loads(mpath.read_text())
        keys = ("source", "model_fingerprint", "items", "part_size", "captions")
        if any(old.get(k) != manifest[k] for k in keys):
            theirs = ", ".join(f"{k}={old.get(k)}" for k in keys)
            raise ClipforgeError(f"{out} holds embeddings of another run ({theirs}); use a new folder")
    else:
        mpath.write_text(json.dumps(manifest, indent=2))
    n_parts = (len(items) + part_size - 1) // part_size
    done = 0
    with progress_bar("embed", total=len(items), enabled=progress) as bar:
        for part in range(n_parts):
            name = f"{part:05d}"
            chunk = items[part * part_size : (part + 1) * part_size]
            if (out / f"part-{name}.parquet").is_file():
                bar.advance(len(chunk))
                continue
            if max_parts is not None and done >= max_parts:
                break
            image_emb, rows, text_emb, skipped = _embed_part(model, chunk, part * part_size, batch_size, captions)
            _save_npy(image_emb, out / f"part-{name}.npy")
            if text_emb is not None:
                _save_npy(text_emb, out / f"text-{name}.npy")
            (out / f"skipped-{name}.jsonl").write_text("".join(json.dumps(s) + "\n" for s in skipped))
            table = pa.Table.from_pylist(rows, schema=_SCHEMA)
            tmp = out / f".part-{name}.parquet.tmp"
            pq.write_table(table, tmp)
            os.replace(tmp, out / f"part-{name}.parquet")  # the part is complete only now
            done += 1
            bar.advance(len(chunk))
    return out


_SCHEMA = pa.schema([("id", pa.int64()), ("path", pa.string()), ("caption", pa.string()), ("width", pa.int32()),
                     ("height", pa.int32()), ("sha1", pa.string())])


def read_embeddings(emb_dir: str | Path) -> tuple[np.ndarray, pa.Table, dict]:
    """All complete parts: (float32 [N, D] embeddings, metadata table, manifest)."""
    emb = Path(emb_dir)
    if not (emb / "manifest.json").is_file():
        raise ClipforgeError(f"{emb}: not an embeddings folder (no manifest.json; run clipforge embed)")
    manifest = json.loads((emb / "manifest.json").read_text())
    parts = sorted(emb.glob("part-*.parquet"))
    if not parts:
        raise ClipforgeError(f"{emb}: no complete embedding parts yet")
    arrays = [np.load(p.with_suffix(".npy")).astype(np.float32) for p in parts]
    tables = [pq.read_table(p) for p in parts]
    return np.concatenate(arrays), pa.concat_tables(tables), manifest


def skipped_items(emb_dir: str | Path) -> list[dict]:
    out = []
    for p in sorted(Path(emb_dir).glob("skipped-*.jsonl")):
        out += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return out
