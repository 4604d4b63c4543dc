"""Fast-scan product quantisation with exact re-ranking: the approximate index for large collections.

Every query scans all the collection's 4-bit PQ codes (FAISS ``IndexPQFastScan``: Jégou et al. 2011,
"Product quantization for nearest neighbor search", with André et al. 2017's SIMD look-up tables),
keeps ``effort * k`` candidates, and re-ranks them by their exact inner product with the stored
float16 vectors. Unlike graph (HNSW) or inverted-file (IVF) indexes, nothing here relies on the
collection being clustered, so recall holds up even on uniformly random vectors, where IVF and HNSW
must visit most of the collection (``docs/benchmarks.md``).

* ``d / 2`` sub-quantisers of 2 dimensions, 16 centroids each: ``d / 4`` bytes a vector;
* the codes are split into shards searched by one thread each (FAISS ``IndexShards``), so a single
  query uses every core;
* the float16 vectors (``vectors.npy``) are memory-mapped: only the candidates' rows are read.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np


def divisor_at_most(d: int, cap: int) -> int:
    """The largest divisor of ``d`` that is at most ``cap`` (at least 1): a valid PQ sub-quantiser count."""
    m = max(1, cap)
    while d % m:
        m -= 1
    return m


def sub_quantizers(d: int) -> int:
    """``d / 2`` sub-quantisers (2 dimensions each) for even ``d``, else the largest divisor below it."""
    return divisor_at_most(d, d // 2)


class RerankedPQIndex:
    """Sharded 4-bit fast-scan PQ codes plus float16 vectors for exact re-ranking.

    Args:
        shards: the code shards (FAISS ``IndexPQFastScan``, inner product), in id order.
        vectors: ``[n, d]`` float16 unit vectors (a memory map when opened from disk).
    """

    def __init__(self, shards: list[faiss.Index], vectors: np.ndarray) -> None:
        self.shards = shards  # kept referenced: IndexShards does not own them
        self.vectors = vectors
        self.codes = faiss.IndexShards(vectors.shape[1], True, True)  # threaded, successive ids
        for shard in shards:
            self.codes.add_shard(shard)

    @property
    def ntotal(self) -> int:
        return len(self.vectors)

    @classmethod
    def build(cls, vectors: np.ndarray, shards: int, train_size: int = 65536, seed: int = 0) -> RerankedPQIndex:
        """Train the quantiser on a sample of ``vectors`` (unit, float32) and encode them into ``shards`` parts."""
        n, d = vectors.shape
        trained = faiss.IndexPQFastScan(d, sub_quantizers(d), 4, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = vectors if n <= train_size else vectors[np.sort(rng.choice(n, train_size, replace=False))]
        trained.train(np.ascontiguousarray(sample, dtype=np.float32))
        parts = []
        for rows in np.array_split(np.arange(n), max(1, min(shards, n))):
            part = faiss.clone_index(trained)
            part.add(np.ascontiguousarray(vectors[rows], dtype=np.float32))
            parts.append(part)
        return cls(parts, vectors.astype(np.float16))

    def save(self, folder: Path) -> None:
        for i, shard in enumerate(self.shards):
            faiss.write_index(shard, str(folder / f"codes-{i:03d}.faiss"))
        np.save(folder / "vectors.npy", np.asarray(self.vectors, dtype=np.float16))

    @classmethod
    def load(cls, folder: Path, shards: int) -> RerankedPQIndex:
        parts = [faiss.read_index(str(folder / f"codes-{i:03d}.faiss")) for i in range(shards)]
        return cls(parts, np.load(folder / "vectors.npy", mmap_mode="r"))

    def vector(self, row: int) -> np.ndarray:
        return np.asarray(self.vectors[row], dtype=np.float32)

    def search(self, queries: np.ndarray, k: int, effort: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (scores, ids) per query row, re-ranked exactly among ``effort * k`` candidates."""
        nq = len(queries)
        k = min(k, self.ntotal)
        _, cand = self.codes.search(queries, min(self.ntotal, max(k, effort * k)))
        scores = np.full((nq, k), -np.inf, dtype=np.float32)
        ids = np.full((nq, k), -1, dtype=np.int64)
        for row, (q, c) in enumerate(zip(queries, cand)):
            c = np.sort(c[c >= 0])  # sorted rows read the memory map in file order
            # In blocks: a request's memory stays ~RERANK_BLOCK vectors whatever its candidate count.
            exact = np.concatenate([np.asarray(self.vectors[c[i : i + RERANK_BLOCK]], dtype=np.float32) @ q
                                    for i in range(0, len(c), RERANK_BLOCK)]) if len(c) else np.zeros(0, np.float32)
            top = _top(exact, k)
            scores[row, : len(top)] = exact[top]
            ids[row, : len(top)] = c[top]
        return scores, ids


RERANK_BLOCK = 4096


def _top(values: np.ndarray, k: int) -> np.ndarray:
    if len(values) <= k:
        return np.argsort(-values, kind="stable")
    part = np.argpartition(-values, k - 1)[:k]
    return part[np.argsort(-values[part], kind="stable")]
