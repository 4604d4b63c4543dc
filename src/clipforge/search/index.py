"""``clipforge index``: a FAISS index over an embeddings folder, chosen from its size and a memory budget.

* up to ``exact_limit`` vectors (default 200k), or when the exact index fits the budget and the
  collection is small enough to scan fast: exact inner product (``IndexFlatIP``);
* larger, when the vectors fit the budget: HNSW (M = 32, efConstruction = 200, efSearch = 128), the
  fastest at high recall;
* larger than the budget: IVF with product quantisation (nlist ~ 4 sqrt(N), D/8 sub-quantisers of
  8 bits, nprobe = 32), about D bytes per vector.

The choice and its reason are written to ``index.json``. The index is built in a temporary folder
and renamed over the old one: a half-built index never replaces a good one. Near-duplicate groups
(cosine >= threshold) can be computed and stored for deduplicating results.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow.parquet as pq

from clipforge.errors import ClipforgeError
from clipforge.search.embed import read_embeddings

HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 200, 128
IVF_NPROBE = 32


def choose_index(n: int, d: int, memory_budget_mb: float | None = None, exact_limit: int = 200_000) -> dict[str, Any]:
    """The index kind and parameters for n vectors of dimension d, with the reason."""
    flat_mb = n * d * 4 / 2**20
    hnsw_mb = flat_mb + n * HNSW_M * 2 * 4 / 2**20
    budget = memory_budget_mb if memory_budget_mb is not None else float("inf")
    if n <= exact_limit and flat_mb <= budget:
        return {"kind": "flat", "reason": f"{n} vectors <= {exact_limit}: exact search ({flat_mb:.0f} MB)"}
    if hnsw_mb <= budget:
        return {"kind": "hnsw", "M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH,
                "reason": f"{n} vectors > {exact_limit}; HNSW needs {hnsw_mb:.0f} MB <= budget {budget:.0f} MB"}
    nlist = max(16, int(4 * math.sqrt(n)))
    m = max(1, d // 8)
    while d % m:
        m -= 1
    return {"kind": "ivfpq", "nlist": nlist, "m": m, "nbits": 8, "nprobe": IVF_NPROBE,
            "reason": f"HNSW would need {hnsw_mb:.0f} MB > budget {budget:.0f} MB; IVF-PQ needs about "
                      f"{n * m / 2**20:.0f} MB of codes"}


def build_faiss(vectors: np.ndarray, spec: dict[str, Any], seed: int = 0) -> faiss.Index:
    n, d = vectors.shape
    kind = spec["kind"]
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, spec["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec["efConstruction"]
        index.hnsw.efSearch = spec["efSearch"]
    elif kind == "ivfpq":
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFPQ(quantizer, d, spec["nlist"], spec["m"], spec["nbits"], faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = vectors[rng.choice(n, size=min(n, max(spec["nlist"] * 40, 10_000)), replace=False)]
        index.train(sample)
        index.nprobe = spec["nprobe"]
    else:
        raise ClipforgeError(f"unknown index kind {kind!r}")
    index.add(vectors)
    return index


def near_duplicate_groups(vectors: np.ndarray, threshold: float, k: int = 16) -> np.ndarray:
    """Group id per vector: connected components of pairs with cosine >= threshold among k neighbours."""
    n = len(vectors)
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    sims, nbrs = flat.search(vectors, min(k, n))
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        for s, j in zip(sims[i], nbrs[i]):
            if j >= 0 and j != i and s >= threshold:
                a, b = find(i), find(int(j))
                if a != b:
                    parent[max(a, b)] = min(a, b)
    return np.array([find(i) for i in range(n)], dtype=np.int64)


def build_index(emb_dir: str | Path, out_dir: str | Path, memory_budget_mb: float | None = None,
                kind: str | None = None, dedup_threshold: float | None = None) -> Path:
    vectors, meta, manifest = read_embeddings(emb_dir)
    vectors = np.ascontiguousarray(vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12))
    n, d = vectors.shape
    spec = choose_index(n, d, memory_budget_mb)
    if kind and kind != spec["kind"]:
        spec = {**choose_index(n, d, 0 if kind == "ivfpq" else None, exact_limit=n if kind == "flat" else 0),
                "reason": f"forced by --kind {kind}"}
        if kind == "hnsw":
            spec = {"kind": "hnsw", "M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH,
                    "reason": "forced by --kind hnsw"}
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    faiss.write_index(build_faiss(vectors, spec), str(tmp / "index.faiss"))
    pq.write_table(meta, tmp / "metadata.parquet")
    info = {"n": n, "dim": d, **spec, "model": manifest.get("model", ""),
            "model_fingerprint": manifest.get("model_fingerprint"), "embeddings": str(Path(emb_dir).resolve())}
    if dedup_threshold is not None:
        np.save(tmp / "dedup.npy", near_duplicate_groups(vectors, dedup_threshold))
        info["dedup_threshold"] = dedup_threshold
    (tmp / "index.json").write_text(json.dumps(info, indent=2))
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out
