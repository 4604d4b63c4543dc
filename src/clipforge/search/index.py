"""``clipforge index``: an index over an embeddings folder, chosen from its size and a memory budget.

* up to ``exact_limit`` vectors (default 50k, about 7 ms a query on one core), when they fit the
  budget: exact inner product (FAISS ``IndexFlatIP``);
* larger, when the float16 vectors plus d/4 bytes of codes each fit the budget: ``pq-rerank``
  (:mod:`clipforge.search.reranked_pq`), a scan of 4-bit fast-scan PQ codes over all cores and an
  exact re-ranking of the best candidates;
* larger than the budget: IVF with product quantisation (nlist ~ 4 sqrt(N), d/8 sub-quantisers of
  8 bits: d/8 bytes a vector), the only kind that does not keep the vectors;
* HNSW (M = 32, efConstruction = 200) when asked for with ``kind="hnsw"``.

For the approximate kinds the search effort (candidates per result, efSearch or nprobe) is chosen
at build time as the least that reaches ``target_recall`` recall@10 against exact search, measured
on held-out queries: the collection's caption embeddings when it has them, else half collection
vectors plus noise and half random directions (:mod:`clipforge.search.tuning`). The choice, its
reason and the measured ladder are written to ``index.json``.

The index is built in a temporary folder and renamed over the old one: a half-built index never
replaces a good one. Near-duplicate groups (cosine >= threshold) can be computed and stored for
deduplicating results.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from clipforge.errors import ClipforgeError
from clipforge.io import swap_in
from clipforge.search.dedup import near_duplicate_groups
from clipforge.search.embed import embedding_progress, read_caption_embeddings, read_embeddings
from clipforge.search.faiss_index import FaissIndex
from clipforge.search.reranked_pq import RerankedPQIndex, divisor_at_most, sub_quantizers
from clipforge.search.tuning import exact_top_k, synthetic_queries, tune_effort, unit_rows

log = logging.getLogger(__name__)

KINDS = ("flat", "pq-rerank", "ivfpq", "hnsw")
HNSW_M, HNSW_EF_CONSTRUCTION = 32, 200
EXACT_LIMIT = 50_000
TUNING_QUERIES = 200
#: Efforts tried, in order, until the target recall is reached.
LADDERS = {"pq-rerank": [1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 1000],
           "hnsw": [16, 32, 64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096]}
#: Effort of an approximate index opened without a measured one (the exact index has none).
DEFAULT_EFFORT = {"pq-rerank": 20, "hnsw": 128, "ivfpq": 32}


def default_shards() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def choose_index(n: int, d: int, memory_budget_mb: float | None = None, exact_limit: int = EXACT_LIMIT,
                 kind: str | None = None, threads: int | None = None) -> dict[str, Any]:
    """The index kind and its build parameters for ``n`` vectors of dimension ``d``, with the reason.

    ``threads``: how many threads one query's scan of a pq-rerank index is split over (its shards);
    default: the CPUs here, at most 8.
    """
    if kind is not None and kind not in KINDS:
        raise ClipforgeError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")
    flat_mb = n * d * 4 / 2**20
    m = sub_quantizers(d)
    pq_mb = n * (d * 2 + math.ceil(m / 2)) / 2**20
    budget = memory_budget_mb if memory_budget_mb is not None else float("inf")
    pq_spec = {"kind": "pq-rerank", "m": m, "nbits": 4, "shards": threads or default_shards()}
    nlist = max(16, min(n // 39, int(4 * math.sqrt(n))))
    mi = divisor_at_most(d, d // 8)
    ivf_spec = {"kind": "ivfpq", "nlist": nlist, "m": mi, "nbits": 8}
    if kind == "flat":
        return {"kind": "flat", "reason": f"asked for: exact search ({flat_mb:.0f} MB)"}
    if kind == "pq-rerank":
        return {**pq_spec, "reason": f"asked for: PQ codes + float16 vectors ({pq_mb:.0f} MB)"}
    if kind == "ivfpq":
        return {**ivf_spec, "reason": f"asked for: IVF-PQ ({n * mi / 2**20:.0f} MB of codes)"}
    if kind == "hnsw":
        return {"kind": "hnsw", "M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION,
                "reason": f"asked for: HNSW ({flat_mb + n * HNSW_M * 8 / 2**20:.0f} MB)"}
    if n <= exact_limit and flat_mb <= budget:
        return {"kind": "flat", "reason": f"{n} vectors <= {exact_limit}: exact search ({flat_mb:.0f} MB)"}
    if pq_mb <= budget:
        return {**pq_spec, "reason": f"{n} vectors > {exact_limit}: a scan of {m} 4-bit codes a vector on "
                                     f"{pq_spec['shards']} threads, then exact re-ranking from float16 vectors "
                                     f"({pq_mb:.0f} MB <= budget {budget:.0f} MB)"}
    return {**ivf_spec, "reason": f"the float16 vectors would need {pq_mb:.0f} MB > budget {budget:.0f} MB; "
                                  f"IVF-PQ keeps {n * mi / 2**20:.0f} MB of codes"}


def build_backend(vectors: np.ndarray, spec: dict[str, Any]) -> FaissIndex | RerankedPQIndex:
    if spec["kind"] == "pq-rerank":
        return RerankedPQIndex.build(vectors, spec["shards"])
    return FaissIndex.build(vectors, spec)


def open_backend(folder: Path, info: dict[str, Any]) -> FaissIndex | RerankedPQIndex:
    if info["kind"] == "pq-rerank":
        return RerankedPQIndex.load(folder, info["shards"])
    return FaissIndex.load(folder, info["kind"])


def ladder(spec: dict[str, Any]) -> list[int]:
    if spec["kind"] == "ivfpq":
        return sorted({2**i for i in range(int(math.log2(spec["nlist"])) + 1)} | {spec["nlist"]})
    return LADDERS[spec["kind"]]


def tune(index: FaissIndex | RerankedPQIndex, spec: dict[str, Any], vectors: np.ndarray,
         queries: np.ndarray, groups: np.ndarray | None, source: str, target: float) -> dict[str, Any]:
    """Measure recall@10 along the effort ladder; the spec's ``effort`` becomes the least reaching ``target``
    in every group of queries."""
    truth = exact_top_k(vectors, queries, min(10, len(vectors)))
    effort, recall, table = tune_effort(index.search, queries, truth, ladder(spec), target, groups)
    spec = {**spec, "effort": effort, "recall_at_10": recall,
            "tuning": {"target_recall_at_10": target, "queries": f"{len(queries)} {source}",
                       "effort": "candidates per result" if spec["kind"] == "pq-rerank"
                       else "efSearch" if spec["kind"] == "hnsw" else "nprobe",
                       "recall_by_effort": table,
                       "columns": "effort, mean recall@10, mean recall@10 of the worst query group"}}
    if recall < target:
        spec["reason"] += f"; recall@10 only {recall:.3f} at the highest effort (target {target})"
    return spec


def build_index(emb_dir: str | Path, out_dir: str | Path, memory_budget_mb: float | None = None,
                kind: str | None = None, dedup_threshold: float | None = None, target_recall: float = 0.95,
                exact_limit: int = EXACT_LIMIT, threads: int | None = None, verbose: bool = False,
                partial: bool = False) -> Path:
    """Build ``out_dir`` from the embeddings folder ``emb_dir`` (see the module docstring).

    An embeddings folder with parts missing (an embed still running or interrupted) is refused
    unless ``partial``: an index of part of a collection is rarely what was meant.
    """
    def say(msg: str) -> None:
        if verbose:
            log.info(msg)

    if not 0 < target_recall <= 1:
        raise ClipforgeError(f"--target-recall {target_recall}: expected a number in (0, 1]")
    vectors, meta, manifest = read_embeddings(emb_dir)
    done, n_parts, items = embedding_progress(emb_dir)
    if done < n_parts and not partial:
        raise ClipforgeError(f"{emb_dir}: {n_parts - done} of {n_parts} embedding parts are missing ({len(vectors)} of "
                             f"{items} items embedded); finish them by re-running the same clipforge embed command "
                             "(it resumes), or pass --partial to index what is there")
    vectors = unit_rows(vectors)
    n, d = vectors.shape
    spec = choose_index(n, d, memory_budget_mb, exact_limit, kind, threads)
    say(f"building a {spec['kind']} index of {n} vectors (d={d}): {spec['reason']}")
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    index = build_backend(vectors, spec)
    if spec["kind"] != "flat":
        captions = read_caption_embeddings(emb_dir)
        if captions is not None and len(captions) >= 10:
            rng = np.random.default_rng(0)
            queries = unit_rows(captions[np.sort(rng.choice(len(captions), min(TUNING_QUERIES, len(captions)),
                                                            replace=False))])
            groups, source = None, "caption embeddings of the collection"
        else:
            queries, groups = synthetic_queries(vectors, TUNING_QUERIES, seed=0)
            source = "queries: half collection vectors plus noise (cosine ~0.71), half random directions"
        say(f"measuring recall@10 against exact search on {len(queries)} {source}")
        spec = tune(index, spec, vectors, queries, groups, source, target_recall)
        say(f"effort {spec['effort']} ({spec['tuning']['effort']}): recall@10 {spec['recall_at_10']:.3f}")
    index.save(tmp)
    pq.write_table(meta, tmp / "metadata.parquet")
    info = {"n": n, "dim": d, **spec, "model": manifest.get("model", ""),
            "model_fingerprint": manifest.get("model_fingerprint"), "embeddings": str(Path(emb_dir).resolve()),
            "root": manifest.get("root"), "parts": {"complete": done, "total": n_parts}}
    if dedup_threshold is not None:
        say(f"grouping near-duplicates (cosine >= {dedup_threshold})")
        np.save(tmp / "dedup.npy", near_duplicate_groups(vectors, dedup_threshold, progress=verbose))
        info["dedup_threshold"] = dedup_threshold
    (tmp / "index.json").write_text(json.dumps(info, indent=2))
    swap_in(tmp, out)
    return out
