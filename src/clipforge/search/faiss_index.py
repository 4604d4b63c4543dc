"""Single-file FAISS indexes: exact inner product, HNSW, IVF-Flat and IVF-PQ, memory-mapped where FAISS can.

``effort`` is passed per call (FAISS search parameters), never set on the shared index, so
concurrent requests with different efforts do not race: HNSW's ``efSearch`` (Malkov & Yashunin
2018), IVF's ``nprobe`` (Jégou et al. 2011); the exact index has none.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from clipforge.errors import ClipforgeError

FILE = "index.faiss"


class FaissIndex:
    """One FAISS index of kind ``flat``, ``hnsw``, ``ivfflat`` or ``ivfpq`` (see :mod:`clipforge.search.index`)."""

    def __init__(self, index: faiss.Index, kind: str) -> None:
        self.index = index
        self.kind = kind
        self._direct_map = False
        self._lock = threading.Lock()

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    @classmethod
    def build(cls, vectors: np.ndarray, spec: dict[str, Any], seed: int = 0) -> FaissIndex:
        n, d = vectors.shape
        kind = spec["kind"]
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, spec["M"], faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = spec["efConstruction"]
        elif kind in ("ivfpq", "ivfflat"):
            if kind == "ivfpq":
                index = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, spec["nlist"], spec["m"], spec["nbits"],
                                         faiss.METRIC_INNER_PRODUCT)
            else:
                index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, spec["nlist"], faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(seed)
            size = min(n, max(spec["nlist"] * 40, 10_000))  # FAISS wants >= 39 training points a list
            index.train(vectors[np.sort(rng.choice(n, size=size, replace=False))])
        else:
            raise ClipforgeError(f"unknown index kind {kind!r}")
        index.add(vectors)
        return cls(index, kind)

    def save(self, folder: Path) -> None:
        faiss.write_index(self.index, str(folder / FILE))

    @classmethod
    def load(cls, folder: Path, kind: str) -> FaissIndex:
        path = str(folder / FILE)
        try:
            index = faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError:  # kinds FAISS cannot map are read into memory
            index = faiss.read_index(path)
        return cls(index, kind)

    def vector(self, row: int) -> np.ndarray | None:
        """The stored vector of ``row`` (IVF-PQ keeps only codes: None)."""
        if self.kind == "ivfpq":
            return None
        if self.kind == "ivfflat":
            with self._lock:
                if not self._direct_map:  # IVF lists are not in id order: a row -> (list, offset) map first
                    faiss.extract_index_ivf(self.index).make_direct_map()
                    self._direct_map = True
        return self.index.reconstruct(row)

    def search(self, queries: np.ndarray, k: int, effort: int) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(effort, k))
        elif self.kind in ("ivfpq", "ivfflat"):
            params = faiss.SearchParametersIVF(nprobe=effort)
        else:
            params = None
        return self.index.search(queries, min(k, self.ntotal), params=params)
