"""``clipforge embed``: a collection -> L2-normalised float16 embeddings in parts, with metadata.

Layout of EMB_DIR::

    manifest.json            model, source, item count, part size, dimension
    part-00000.npy           float16 [n, D] image embeddings of items 0 .. part_size-1 (readable ones)
    part-00000.parquet       id, path, member/offset/size (a shard's image), caption, width, height,
                             sha1 of the image bytes, for the same rows
    text-00000.npy           (with captions) float16 caption embeddings, same rows
    skipped-00000.jsonl      items of the part that could not be read, and why
    skipped-rows.jsonl       CSV rows left out before embedding (no image path, a missing field)

Each part is written to temporary names and renamed, the .parquet last: a part exists only when it
is complete, so an interrupted run resumes at the first missing part and ends with the same files.
Within a part, progress is saved every ``checkpoint_seconds`` (``partial-00000.npz/.json``), so a
kill loses at most that much work. Under ``torchrun`` each rank embeds every world_size-th part
(each with its own device); the folder is the same as one process makes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from clipforge.engine.distributed import DistInfo, barrier
from clipforge.errors import ClipforgeError, ImageReadError
from clipforge.images.decode import open_image
from clipforge.images.preprocess import check_aspect
from clipforge.io import atomic_file, atomic_write_text
from clipforge.models.clip import CLIP
from clipforge.search.collection import Item, read_collection, read_item_bytes, source_key


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
    row = {"path": item.path, "member": item.member, "offset": item.offset, "size": len(data),
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


class _PartProgress:
    """A part's work so far (features, rows, captions, skipped items), saved every few seconds."""

    def __init__(self, out: Path, name: str, dim: int) -> None:
        self.npz, self.json = out / f"partial-{name}.npz", out / f"partial-{name}.json"
        self.feats: list[np.ndarray] = []
        self.rows: list[dict] = []
        self.texts: list[str] = []
        self.skipped: list[dict] = []
        self.next = 0  # offset in the part of the first item not yet accounted for
        self.dim = dim
        if self.json.is_file() and self.npz.is_file():
            state = json.loads(self.json.read_text())
            with np.load(self.npz) as z:
                feats = z["image"]
            if len(feats) == len(state["rows"]):  # the .json is written last: a mismatch is a torn save
                self.feats, self.rows, self.texts = [feats], state["rows"], state["texts"]
                self.skipped, self.next = state["skipped"], state["next"]

    def image_features(self) -> np.ndarray:
        return np.concatenate(self.feats) if self.feats else np.zeros((0, self.dim), np.float16)

    def save(self) -> None:
        feats = self.image_features()
        self.feats = [feats]
        with atomic_file(self.npz) as tmp, open(tmp, "wb") as f:
            np.savez(f, image=feats)
        atomic_write_text(json.dumps({"next": self.next, "rows": self.rows, "texts": self.texts,
                                      "skipped": self.skipped}), self.json)

    def remove(self) -> None:
        self.npz.unlink(missing_ok=True)
        self.json.unlink(missing_ok=True)


@torch.no_grad()
def _embed_part(model: CLIP, items: list[Item], first_id: int, batch_size: int, progress: _PartProgress,
                pool: ThreadPoolExecutor, bar, device: torch.device, checkpoint_seconds: float) -> None:
    images: list[torch.Tensor] = []
    waiting: list[int] = []  # offsets of the decoded images not yet encoded
    last_save = time.monotonic()

    def flush() -> None:
        nonlocal last_save
        if images:
            feats = model.encode_image(torch.stack(images).to(device), normalize=True).float().cpu()
            progress.feats.append(feats.numpy().astype(np.float16))
            bar.advance(len(images))
            images.clear()
        # Everything up to here is accounted for: a save now resumes right after it.
        progress.next = (waiting[-1] + 1) if waiting else progress.next
        waiting.clear()
        if checkpoint_seconds and time.monotonic() - last_save > checkpoint_seconds:
            progress.save()
            last_save = time.monotonic()

    start = progress.next
    bar.advance(start)
    # Items are decoded ahead by the pool, in order, while the model encodes the previous batch.
    todo = items[start:]
    for offset, loaded in enumerate(_bounded_map(pool, lambda it: _load(model, it), todo, ahead=2 * batch_size),
                                    start=start):
        item = items[offset]
        waiting.append(offset)
        if isinstance(loaded, str):
            progress.skipped.append({"id": first_id + offset, "path": item.name, "reason": loaded})
            bar.advance()
            continue
        tensor, row = loaded
        images.append(tensor)
        progress.rows.append({"id": first_id + offset, **row})
        progress.texts.append(item.caption)
        if len(images) == batch_size:
            flush()
    flush()


def embed_collection(model: CLIP, source: str, out_dir: str | Path, model_path: str = "", part_size: int = 10000,
                     batch_size: int = 64, captions: bool = False, progress: bool = True,
                     max_parts: int | None = None, workers: int | None = None, image_column: str | None = None,
                     caption_column: str | None = None, checkpoint_seconds: float = 60.0,
                     info: DistInfo | None = None, device: torch.device | str | None = None) -> Path:
    """Embed every item of ``source`` into ``out_dir`` (resuming where a previous run stopped).

    The model's towers may run on another inference path (:mod:`clipforge.inference`, e.g. ONNX
    Runtime); the manifest records which.

    ``workers`` threads decode and preprocess images while the model encodes (default: the cores
    torch's threads leave free, at least 1, at most 8); the result does not depend on it, nor on
    the number of ranks ``info`` describes (each embeds every world_size-th part).
    """
    from clipforge.evaluation.cache import model_fingerprint
    from clipforge.utils.progress import progress_bar

    info = info or DistInfo()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device).eval()
    out = Path(out_dir)
    collection = read_collection(source, image_column, caption_column)
    items = collection.items
    manifest = {"source": source_key(source), "model": model_path, "model_fingerprint": model_fingerprint(model),
                "items": len(items), "part_size": part_size, "dim": model.config.embed_dim, "captions": captions,
                "root": collection.root, "preprocess": model.preprocess.to_dict(),
                "inference": getattr(model, "inference_paths", None)}
    mpath = out / "manifest.json"
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if mpath.is_file():
            old = json.loads(mpath.read_text())
            old_source = source_key(str(old.get("source", "")))  # older folders recorded the path as typed
            keys = ("model_fingerprint", "items", "part_size", "captions")
            if old_source != manifest["source"] or any(old.get(k) != manifest[k] for k in keys):
                theirs = ", ".join(f"{k}={old.get(k)}" for k in ("source", *keys))
                raise ClipforgeError(f"{out} holds embeddings of another run ({theirs}); use a new folder")
        else:
            atomic_write_text(json.dumps(manifest, indent=2), mpath)
        atomic_write_text("".join(json.dumps(s) + "\n" for s in collection.skipped), out / "skipped-rows.jsonl")
    barrier(info)
    n_parts = (len(items) + part_size - 1) // part_size
    mine = [part for part in range(n_parts) if part % info.world_size == info.rank]
    done = 0
    # Decoding threads and torch's threads share the cores: by default, the cores torch leaves free.
    workers = workers or max(1, min(8, (os.cpu_count() or 1) - torch.get_num_threads()))
    total = sum(len(items[p * part_size : (p + 1) * part_size]) for p in mine)
    with progress_bar("embed", total=total, enabled=progress and info.is_main) as bar, \
            ThreadPoolExecutor(workers) as pool:
        for part in mine:
            name = f"{part:05d}"
            chunk = items[part * part_size : (part + 1) * part_size]
            if (out / f"part-{name}.parquet").is_file():
                bar.advance(len(chunk))
                continue
            if max_parts is not None and done >= max_parts:
                break
            state = _PartProgress(out, name, model.config.embed_dim)
            _embed_part(model, chunk, part * part_size, batch_size, state, pool, bar, device, checkpoint_seconds)
            _save_npy(state.image_features(), out / f"part-{name}.npy")
            if captions:
                from clipforge.evaluation.embed import embed_texts

                dim = model.config.embed_dim
                text_emb = (embed_texts(model, state.texts).numpy().astype(np.float16) if state.texts
                            else np.zeros((0, dim), np.float16))
                _save_npy(text_emb, out / f"text-{name}.npy")
            atomic_write_text("".join(json.dumps(s) + "\n" for s in state.skipped), out / f"skipped-{name}.jsonl")
            with atomic_file(out / f"part-{name}.parquet") as tmp:  # the part is complete only now
                pq.write_table(pa.Table.from_pylist(state.rows, schema=_SCHEMA), tmp)
            state.remove()
            done += 1
    barrier(info)
    return out


def embedding_progress(emb_dir: str | Path) -> tuple[int, int, int]:
    """(complete parts, parts in all, items in all) of an embeddings folder."""
    emb = Path(emb_dir)
    manifest = json.loads((emb / "manifest.json").read_text())
    size = max(1, int(manifest.get("part_size") or 1))
    n_parts = (int(manifest["items"]) + size - 1) // size
    return len(list(emb.glob("part-*.parquet"))), n_parts, int(manifest["items"])


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
    for p in sorted(Path(emb_dir).glob("skipped-[0-9]*.jsonl")):
        out += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return out
