"""Query an index folder by vector, text or image; results carry id, score and metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow.parquet as pq

from clipforge.errors import ClipforgeError


@dataclass
class Result:
    id: int
    score: float
    path: str
    caption: str
    width: int
    height: int


class Searcher:
    """Opens ``index.faiss`` (memory-mapped where FAISS supports it), the metadata and dedup groups."""

    def __init__(self, index_dir: str | Path) -> None:
        self.dir = Path(index_dir)
        info_path = self.dir / "index.json"
        if not info_path.is_file():
            raise ClipforgeError(f"{self.dir}: not an index folder (no index.json; run clipforge index)")
        self.info: dict[str, Any] = json.loads(info_path.read_text())
        path = str(self.dir / "index.faiss")
        try:
            self.index = faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError:
            self.index = faiss.read_index(path)
        self.set_effort(None)
        self.meta = pq.read_table(self.dir / "metadata.parquet").to_pylist()
        dedup = self.dir / "dedup.npy"
        self.groups = np.load(dedup) if dedup.is_file() else None

    def __len__(self) -> int:
        return self.index.ntotal

    def set_effort(self, effort: int | None) -> None:
        """Recall/latency knob of approximate indexes: HNSW's efSearch or IVF's nprobe (None: index.json's)."""
        kind = self.info.get("kind")
        if kind == "hnsw":
            self.index.hnsw.efSearch = int(effort or self.info.get("efSearch", 128))
        elif kind == "ivfpq":
            self.index.nprobe = int(effort or self.info.get("nprobe", 32))

    def search(self, queries: np.ndarray, k: int = 10, threshold: float | None = None, dedup: bool = False,
               offset: int = 0, effort: int | None = None) -> list[list[Result]]:
        """Top ``k`` (after ``offset``, for paging) per query row; unit-normalised queries.

        ``effort`` raises recall at the cost of latency on approximate indexes (see :meth:`set_effort`).
        """
        q = np.ascontiguousarray(np.atleast_2d(queries).astype(np.float32))
        q /= np.linalg.norm(q, axis=1, keepdims=True).clip(min=1e-12)
        if q.shape[1] != self.info["dim"]:
            raise ClipforgeError(f"query has dimension {q.shape[1]}, the index {self.info['dim']}")
        want = offset + k
        fetch = want * (4 if dedup and self.groups is not None else 1)
        self.set_effort(effort)
        scores, ids = self.index.search(q, min(fetch, len(self)))
        out = []
        for srow, irow in zip(scores, ids):
            results, seen = [], set()
            for s, i in zip(srow, irow):
                if i < 0 or (threshold is not None and s < threshold):
                    continue
                if dedup and self.groups is not None:
                    g = int(self.groups[i])
                    if g in seen:
                        continue
                    seen.add(g)
                m = self.meta[int(i)]
                results.append(Result(int(m["id"]), float(s), m["path"], m["caption"], m["width"], m["height"]))
            out.append(results[offset:want])
        return out
