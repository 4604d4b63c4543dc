"""Query an index folder by vector, text or image; results carry id, score and metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from clipforge.errors import ClipforgeError
from clipforge.search.index import ALL_KINDS, DEFAULT_EFFORT, open_backend


@dataclass
class Result:
    id: int
    score: float
    path: str
    caption: str
    width: int
    height: int
    member: str = ""  # set when the image is a member of the webdataset shard ``path``


class Searcher:
    """Opens an index folder: the index (memory-mapped where possible), the metadata and dedup groups."""

    def __init__(self, index_dir: str | Path) -> None:
        self.dir = Path(index_dir)
        info_path = self.dir / "index.json"
        if not info_path.is_file():
            raise ClipforgeError(f"{self.dir}: not an index folder (no index.json; run clipforge index)")
        self.info: dict[str, Any] = json.loads(info_path.read_text())
        if self.info.get("kind") not in ALL_KINDS:
            raise ClipforgeError(f"{info_path}: unknown index kind {self.info.get('kind')!r}; rebuild the index")
        self.index = open_backend(self.dir, self.info)
        self.effort: int | None = self.info.get("effort") or DEFAULT_EFFORT.get(self.info["kind"])
        self.meta = pq.read_table(self.dir / "metadata.parquet")
        ids = self.meta.column("id").to_numpy()
        self._id_order = np.argsort(ids, kind="stable")
        self._sorted_ids = ids[self._id_order]
        dedup = self.dir / "dedup.npy"
        self.groups = np.load(dedup) if dedup.is_file() else None
        # The captions' own index (``clipforge embed --captions``): rank the same items by caption.
        self.captions: Searcher | None = Searcher(self.dir / "captions") if (self.dir / "captions").is_dir() else None

    def __len__(self) -> int:
        return self.index.ntotal

    def row_of(self, item_id: int) -> int | None:
        """The index row of an item id, or None when the id is not in the index."""
        at = int(np.searchsorted(self._sorted_ids, item_id))
        if at < len(self._sorted_ids) and self._sorted_ids[at] == item_id:
            return int(self._id_order[at])
        return None

    def item(self, row: int) -> dict[str, Any]:
        """The metadata of a row: id, path, caption, width, height, sha1 (and member/offset/size for shards)."""
        return {name: self.meta.column(name)[row].as_py() for name in self.meta.column_names}

    def stored_vector(self, row: int) -> np.ndarray | None:
        """The indexed vector of a row, when the index keeps vectors (all kinds but IVF-PQ)."""
        return self.index.vector(row)

    def candidates(self, depth: int, effort: int | None = None, dedup: bool = False) -> int:
        """How many vectors the index examines beyond its fixed scan to return ``depth`` results:
        re-ranked candidates (pq-rerank), visited graph nodes (HNSW, ~efSearch), or vectors in the
        probed lists (IVF); 0 for exact search (its cost does not grow with the request)."""
        fetch = depth * (4 if dedup and self.groups is not None else 1)
        effort = int(effort or self.effort or 1)
        kind = self.info["kind"]
        if kind == "pq-rerank":
            return min(len(self), effort * fetch)
        if kind == "hnsw":
            return min(len(self), max(effort, fetch))
        if kind == "milvus" and self.info["milvus"]["index_type"] == "FLAT":
            return 0
        if kind in ("ivfpq", "ivfflat", "milvus"):
            nlist = int(self.info.get("nlist") or 1)
            return min(len(self), -(-effort * len(self) // nlist))
        return 0

    def search(self, queries: np.ndarray, k: int = 10, threshold: float | None = None, dedup: bool = False,
               offset: int = 0, effort: int | None = None) -> list[list[Result]]:
        """Top ``k`` (after ``offset``, for paging) per query row; queries are unit-normalised here.

        ``effort`` trades latency for recall on approximate indexes: candidates re-ranked per result
        (pq-rerank), efSearch (HNSW) or nprobe (IVF); None uses the one measured at build time.
        """
        q = np.ascontiguousarray(np.atleast_2d(queries).astype(np.float32))
        if q.ndim != 2 or q.shape[1] != self.info["dim"]:
            raise ClipforgeError(f"query has dimension {q.shape[-1]}, the index {self.info['dim']}")
        norms = np.linalg.norm(q, axis=1, keepdims=True)
        if not np.isfinite(q).all() or not (np.isfinite(norms) & (norms > 0)).all():
            raise ClipforgeError("query vector must be finite and non-zero")
        q /= norms
        want = offset + k
        fetch = want * (4 if dedup and self.groups is not None else 1)
        scores, ids = self.index.search(q, min(fetch, len(self)), int(effort or self.effort or 1))
        out = []
        for srow, irow in zip(scores, ids):
            kept, seen = [], set()
            for s, i in zip(srow, irow):
                if i < 0 or (threshold is not None and s < threshold):
                    continue
                if dedup and self.groups is not None:
                    g = int(self.groups[i])
                    if g in seen:
                        continue
                    seen.add(g)
                kept.append((float(s), int(i)))
            out.append([self._result(s, i) for s, i in kept[offset:want]])
        return out

    def _result(self, score: float, row: int) -> Result:
        m = self.item(row)
        return Result(int(m["id"]), score, m["path"], m["caption"], m["width"], m["height"], m.get("member") or "")
