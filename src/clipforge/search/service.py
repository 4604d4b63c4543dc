"""What the search server does, without HTTP: queries to results, and an item's bytes, within limits.

:class:`SearchService` is held in ``app.state.service`` (:mod:`clipforge.search.server`) and used by
the routes (:mod:`clipforge.search.routes`); it is also usable on its own. Every request is bounded:

* results: ``offset + k`` at most :attr:`Limits.max_depth`;
* work: the candidates an approximate index re-ranks or visits (:meth:`Searcher.candidates`) at
  most :attr:`Limits.max_candidates`; a request beyond is refused with what to lower;
* heavy work (model runs, image decoding, index scans) runs at most :attr:`Limits.max_heavy` at a
  time; a request that waits longer than :attr:`Limits.queue_seconds` is told to retry (503);
* query images: refused above :attr:`Limits.max_query_pixels`; JPEGs are reduced while decoding.

Served files are only regular files inside the collection root recorded by ``clipforge embed``,
with the size and SHA-1 recorded then: a file replaced, moved or turned into a symlink since is
"gone" (410), and no server-side path is ever put in a message.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import io
import mimetypes
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from clipforge.errors import ClipforgeError
from clipforge.search.collection import read_item_bytes
from clipforge.search.searcher import Result, Searcher


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32).reshape(1, -1)
    norm = float(np.linalg.norm(x))
    if not np.isfinite(norm) or norm == 0:
        raise RequestRefused("query vector must be finite and non-zero")
    return x / norm


class RequestRefused(ClipforgeError):
    """A request the service will not run; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    max_k: int = 200
    max_depth: int = 1000  # offset + k
    max_candidates: int = 50_000  # vectors an approximate index re-ranks or visits for one request
    max_heavy: int = 2  # model runs, decodes and scans at once
    queue_seconds: float = 10.0
    max_query_pixels: int = 16_000_000
    max_text_chars: int = 1000


def _release_memory() -> None:
    """Give freed heap memory back to the OS (glibc keeps it otherwise after a large decode)."""
    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).malloc_trim(0)


class SearchService:
    """A :class:`Searcher`, the index's model (loaded on the first text or image query) and the limits."""

    def __init__(self, index_dir: str | Path, model_path: str | None = None, limits: Limits | None = None,
                 device: str | None = None, backend: str = "torch", precision: str = "fp32") -> None:
        self.searcher = Searcher(index_dir)
        self.device = device
        self.inference = (backend, precision)  # how queries are encoded (clipforge.inference)
        self.limits = limits or Limits()
        self.model_path = model_path
        self._model = None
        self._model_lock = threading.Lock()
        self._heavy = threading.BoundedSemaphore(self.limits.max_heavy)
        root = self.searcher.info.get("root")
        self.root = Path(root).resolve() if root else None
        self.thumbnail = lru_cache(maxsize=4096)(self._thumbnail)
        if model_path or self.searcher.info.get("model"):
            self.model()  # fail at start-up, not on the first request, when the recorded model is unusable

    # -- the model and the heavy-work gate
    def model(self):
        with self._model_lock:
            if self._model is None:
                from clipforge.search.query import load_index_model

                self._model = load_index_model(self.searcher.info, self.model_path, self.device, *self.inference)
            return self._model

    @contextlib.contextmanager
    def heavy(self) -> Iterator[None]:
        if not self._heavy.acquire(timeout=self.limits.queue_seconds):
            raise RequestRefused("the server is busy; retry in a few seconds", status=503)
        try:
            yield
        finally:
            self._heavy.release()

    # -- queries
    def check(self, k: int, offset: int, effort: int | None, dedup: bool, searcher: Searcher | None = None) -> None:
        """Refuse a request whose results or work exceed the limits (before any work is done)."""
        lim = self.limits
        searcher = searcher or self.searcher
        if k > lim.max_k:
            raise RequestRefused(f"k={k} is over the limit of {lim.max_k}", status=422)
        if offset + k > max(lim.max_depth, lim.max_k):
            raise RequestRefused(f"offset + k = {offset + k} is over the limit of {max(lim.max_depth, lim.max_k)} "
                                 "results; "
                                 "refine the query instead of paging this deep", status=422)
        work = searcher.candidates(offset + k, effort, dedup)
        if work > lim.max_candidates:
            raise RequestRefused(f"this request would make the index examine {work:,} candidates (offset + k = "
                                 f"{offset + k}, effort {effort or self.searcher.effort}); the limit is "
                                 f"{lim.max_candidates:,}: lower k, offset or effort", status=422)

    def text_vector(self, text: str) -> np.ndarray:
        from clipforge.search.query import text_query

        if not text.strip():
            raise RequestRefused("text is empty")
        if len(text) > self.limits.max_text_chars:
            raise RequestRefused(f"text is over {self.limits.max_text_chars} characters", status=422)
        return text_query(self.model(), text)

    def image_vector(self, data: bytes) -> np.ndarray:
        from clipforge.search.query import image_query

        model = self.model()
        try:
            return image_query(model, data, max_pixels=self.limits.max_query_pixels)
        finally:
            _release_memory()

    def modality_vector(self, modality: str, source: str | bytes) -> np.ndarray:
        from clipforge.search.query import modality_query

        return modality_query(self.model(), modality, source)

    def id_vector(self, item_id: int) -> np.ndarray:
        row = self.searcher.row_of(item_id)
        if row is None:
            raise RequestRefused(f"no item with id {item_id}", status=404)
        q = self.searcher.stored_vector(row)  # the indexed vector: no model run, no file read
        return q if q is not None else self.image_vector(self.item_bytes(item_id)[0])

    def search(self, *, text: str | None = None, image: bytes | None = None, vector: list[float] | None = None,
               item_id: int | None = None, k: int = 20, offset: int = 0, threshold: float | None = None,
               dedup: bool = False, effort: int | None = None, text_weight: float = 1.0,
               match: str = "image", modality: tuple[str, str | bytes] | None = None) -> list[Result]:
        """Search by one of ``image``, ``vector`` or ``item_id``, by ``text``, or by an image and a text
        together (embedding arithmetic: the unit image embedding plus ``text_weight`` times the unit
        text embedding, as clip-retrieval combines them). ``match="caption"`` ranks the items by their
        captions' embeddings instead of their images' (when the index has them). ``modality``: a
        (modality, file) of a bound model's, e.g. ("speech", wav_bytes), in place of an image; the
        file as bytes, or as a local path (trusted callers only: it names a file on this machine)."""
        visual = [x for x in (image, vector, item_id, modality) if x is not None]
        if len(visual) > 1:
            raise RequestRefused("give at most one of image, vector or id, or a speech/depth file (and optionally "
                                 "a text)")
        if not visual and text is None:
            raise RequestRefused("give a text, an image, a vector or an id")
        if match not in ("image", "caption"):
            raise RequestRefused(f"match must be 'image' or 'caption', got {match!r}", status=422)
        searcher = self.searcher if match == "image" else self.searcher.captions
        if searcher is None:
            raise RequestRefused("this index has no caption embeddings to match (embed with --captions)")
        self.check(k, offset, effort, dedup, searcher)
        with self.heavy():
            parts = []
            if image is not None:
                parts.append(_unit(self.image_vector(image)))
            elif item_id is not None:
                parts.append(_unit(self.id_vector(item_id)))
            elif vector is not None:
                parts.append(_unit(np.asarray(vector, dtype=np.float32).reshape(1, -1)))
            elif modality is not None:
                parts.append(_unit(self.modality_vector(*modality)))
            if text is not None:
                parts.append(text_weight * _unit(self.text_vector(text)))
            results = searcher.search(np.sum(parts, axis=0), k, threshold, dedup, offset, effort)[0]
        if searcher.candidates(offset + k, effort, dedup) > 10_000:
            _release_memory()  # a heavy re-ranking's buffers go back to the OS, not to a thread's arena
        return results

    # -- the collection's files
    def item(self, item_id: int) -> dict[str, Any]:
        row = self.searcher.row_of(item_id)
        if row is None:
            raise RequestRefused(f"no item with id {item_id}", status=404)
        return self.searcher.item(row)

    def item_bytes(self, item_id: int) -> tuple[bytes, str]:
        """The image's bytes and media type, only when it is still the file that was embedded."""
        m = self.item(item_id)
        gone = RequestRefused(f"item {item_id}'s image is gone or has changed since it was indexed", status=410)
        path = Path(m["path"])
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):
            raise gone from None
        if self.root is not None and not real.is_relative_to(self.root):
            raise gone
        member = m.get("member") or ""
        if not member and (path.is_symlink() or not real.is_file()):
            raise gone
        if not path.is_absolute() and self.root is None:
            raise gone  # a relative path from an old embeddings folder: its base is unknown
        try:
            if not member and (m.get("size") or -1) >= 0 and real.stat().st_size != m["size"]:
                raise gone  # cheaper than reading a replaced file to hash it
            data = read_item_bytes(str(real), member, m.get("offset", -1), m.get("size", -1))
        except OSError:
            raise gone from None
        if m.get("sha1") and hashlib.sha1(data).hexdigest() != m["sha1"]:
            raise gone
        name = member or real.name
        return data, mimetypes.guess_type(name)[0] or "application/octet-stream"

    def _thumbnail(self, item_id: int, size: int) -> bytes:
        from clipforge.images.decode import open_image

        data, _ = self.item_bytes(item_id)
        with self.heavy():
            try:
                img = open_image(data, name=f"item {item_id}", draft_size=size)
            finally:
                _release_memory()
        img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    def stats(self) -> dict[str, Any]:
        i, lim = self.searcher.info, self.limits
        return {"items": len(self.searcher), "dim": i["dim"], "index": i["kind"], "reason": i.get("reason"),
                "effort": self.searcher.effort, "measured_recall_at_10": i.get("recall_at_10"),
                "model": os.path.basename(str(i.get("model") or "")) or None, "dedup": self.searcher.groups is not None,
                "max_k": lim.max_k, "max_depth": max(lim.max_depth, lim.max_k), "max_candidates": lim.max_candidates,
                "captions": self.searcher.captions is not None}
