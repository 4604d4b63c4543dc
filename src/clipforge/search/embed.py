"""``clipforge embed``: a collection -> L2-normalised float16 embeddings in parts, with metadata.

Layout of EMB_DIR::

    manifest.json            model, source, item count, part size, dimension
    part-00000.npy           float16 [n, D] image embeddings of items 0 .. part_size-1 (readable ones)
    part-00000.parquet       id, path, member/offset/size (a shard's image), caption, width, height,
                             sha1 of the image bytes, for the same rows
    text-00000.npy           (with captions) float16 caption embeddings, same rows
    skipped-00000.jsonl      items of the part that could not be read, and why

Each part is written to temporary names and renamed, the .parquet last: a part exists only when it
is complete, so an interrupted run resumes at the first missing part and ends with the same files.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from clipforge.errors import ClipforgeError, ImageReadError
from clipforge.images.decode import open_image
from clipforge.images.preprocess import check_aspect
from clipforge.io import atomic_file, atomic_write_text
from clipforge.models.clip import CLIP
from clipforge.search.collection import Item, list_items, read_item_bytes


def _save_npy(array: np.ndarray, path: Path) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def _load(model: CLIP, item: Item) -> tuple[torch.Tensor, dict] | str:
    """Decode and preprocess one item (in a worker thread: Pillow releases the GIL); an error message if unreadable."""
    try:
        data = read_item_bytes(item.path, item.member, item.offset, item.size)
        img = open_image(data, name=item.name)
        check_aspect(img, item.name)
    except (OSError, ImageReadError) as e:
        return str(e)
    row = {"path": item.path, "member": item.member, "offset": item.offset, "size": item.size,
           "caption": item.caption, "width": img.width, "height": img.height,
           "sha1": hashlib.sha1(data).hexdigest()}
    return model.preprocess(img), row


def _bounded_map(pool: ThreadPoolExecutor, fn, items: list, ahead: int):
    """``pool.map`` in order, but with at most ``ahead`` items in flight (bounded memory)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


@torch.no_grad()
def _embed_part(model: CLIP, items: list[Item], first_id: int, batch_size: int, captions: bool,
                pool: ThreadPoolExecutor, bar) -> tuple:
    feats, rows, texts, skipped = [], [], [], []
    images: list[torch.Tensor] = []

    def flush() -> None:
        if images:
            feats.append(model.encode_image(torch.stack(images), normalize=True).float())
            bar.advance(len(images))
            images.clear()

    # Items are decoded ahead by the pool, in order, while the model encodes the previous batch.
    for offset, loaded in enumerate(_bounded_map(pool, lambda it: _load(model, it), items, ahead=2 * batch_size)):
        item = items[offset]
        if isinstance(loaded, str):
            skipped.append({"id": first_id + offset, "path": item.name, "reason": loaded})
            bar.advance()
            continue
        tensor, row = loaded
        images.append(tensor)
        rows.append({"id": first_id + offset, **row})
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
                     max_parts: int | None = None, workers: int | None = None) -> Path:
    """Embed every item of ``source`` into ``out_dir`` (resuming where a previous run stopped).

    ``workers`` threads decode and preprocess images while the model encodes (default: the cores
    torch's threads leave free, at least 1, at most 8); the result does not depend on it.
    """
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
    # Decoding threads and torch's threads share the cores: by default, the cores torch leaves free.
    workers = workers or max(1, min(8, (os.cpu_count() or 1) - torch.get_num_threads()))
    with progress_bar("embed", total=len(items), enabled=progress) as bar, ThreadPoolExecutor(workers) as pool:
        for part in range(n_parts):
            name = f"{part:05d}"
            chunk = items[part * part_size : (part + 1) * part_size]
            if (out / f"part-{name}.parquet").is_file():
                bar.advance(len(chunk))
                continue
            if max_parts is not None and done >= max_parts:
                break
            image_emb, rows, text_emb, skipped = _embed_part(model, chunk, part * part_size, batch_size, captions,
                                                             pool, bar)
            _save_npy(image_emb, out / f"part-{name}.npy")
            if text_emb is not None:
                _save_npy(text_emb, out / f"text-{name}.npy")
            atomic_write_text("".join(json.dumps(s) + "\n" for s in skipped), out / f"skipped-{name}.jsonl")
            with atomic_file(out / f"part-{name}.parquet") as tmp:  # the part is complete only now
                pq.write_table(pa.Table.from_pylist(rows, schema=_SCHEMA), tmp)
            done += 1
    return out


_SCHEMA = pa.schema([("id", pa.int64()), ("path", pa.string()), ("member", pa.string()), ("offset", pa.int64()),
                     ("size", pa.int64()), ("caption", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
                     ("sha1", pa.string())])


def save_embeddings(out_dir: str | Path, vectors: np.ndarray, paths: list[str] | None = None,
                    captions: list[str] | None = None, caption_vectors: np.ndarray | None = None,
                    model_path: str = "") -> Path:
    """An embeddings folder from vectors made elsewhere, for ``clipforge index`` (one part; ids 0..n-1).

    ``paths`` are the images the service will serve (optional: without them only vector search makes
    sense); ``caption_vectors`` are used by the index build as tuning queries.
    """
    out = Path(out_dir)
    if (out / "manifest.json").exists():
        raise ClipforgeError(f"{out} already holds embeddings; use a new folder")
    vectors = np.asarray(vectors, dtype=np.float32)
    n = len(vectors)
    if vectors.ndim != 2 or n == 0:
        raise ClipforgeError(f"vectors: expected a non-empty [n, d] array, got shape {vectors.shape}")
    for name, given in (("paths", paths), ("captions", captions), ("caption_vectors", caption_vectors)):
        if given is not None and len(given) != n:
            raise ClipforgeError(f"{name}: {len(given)} rows for {n} vectors")
    out.mkdir(parents=True, exist_ok=True)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
    _save_npy((vectors / norms).astype(np.float16), out / "part-00000.npy")
    if caption_vectors is not None:
        cv = np.asarray(caption_vectors, dtype=np.float32)
        _save_npy((cv / np.linalg.norm(cv, axis=1, keepdims=True).clip(min=1e-12)).astype(np.float16),
                  out / "text-00000.npy")
    rows = {"id": np.arange(n, dtype=np.int64), "path": list(paths) if paths is not None else [""] * n,
            "member": [""] * n, "offset": np.full(n, -1, dtype=np.int64), "size": np.full(n, -1, dtype=np.int64),
            "caption": list(captions) if captions is not None else [""] * n,
            "width": np.zeros(n, dtype=np.int32), "height": np.zeros(n, dtype=np.int32), "sha1": [""] * n}
    pq.write_table(pa.table(rows, schema=_SCHEMA), out / "part-00000.parquet")
    manifest = {"source": "save_embeddings", "model": model_path, "items": n, "part_size": n,
                "dim": vectors.shape[1], "captions": caption_vectors is not None}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


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


def read_caption_embeddings(emb_dir: str | Path) -> np.ndarray | None:
    """The caption embeddings (float32, rows as in :func:`read_embeddings`), or None without captions."""
    emb = Path(emb_dir)
    parts = sorted(emb.glob("part-*.parquet"))
    texts = [p.with_name(p.name.replace("part-", "text-")).with_suffix(".npy") for p in parts]
    if not parts or not all(t.is_file() for t in texts):
        return None
    return np.concatenate([np.load(t).astype(np.float32) for t in texts])


def skipped_items(emb_dir: str | Path) -> list[dict]:
    out = []
    for p in sorted(Path(emb_dir).glob("skipped-*.jsonl")):
        out += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return out
