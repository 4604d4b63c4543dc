"""``clipforge index``: an index over an embeddings folder, chosen by measuring the candidates on the
collection's own vectors.

The kinds (``--kind`` forces one):

* ``flat``: exact inner product (FAISS ``IndexFlatIP``); float32 vectors;
* ``ivfflat``: an inverted file of nlist ~ 4 sqrt(N) lists over float32 vectors (Jégou et al.
  2011), probing ``effort`` lists; fast on clustered data, which real embeddings are;
* ``pq-rerank`` (:mod:`clipforge.search.reranked_pq`): a scan of 4-bit fast-scan PQ codes over all
  cores, then exact re-ranking of ``effort * k`` candidates from memory-mapped float16 vectors;
  its cost does not depend on the data's structure;
* ``hnsw``: a graph (M = 32, efConstruction = 200; Malkov & Yashunin 2018), ``effort`` = efSearch;
* ``ivfpq``: IVF with 8-bit product quantisation, d/8 bytes a vector: the only kind that does not
  keep the vectors, for collections larger than the memory budget.

Up to ``exact_limit`` vectors (default 50k, a few ms a query) the index is exact. Above, every kind
that fits the memory budget (HNSW only up to ``HNSW_AUTO_LIMIT`` vectors, its build being slow) is
built on the whole collection, its effort tuned to the least reaching ``target_recall`` recall@10
against exact search, and its latency measured one query at a time at that effort; the fastest
that reaches the target is kept (:func:`choose_by_measurement`). Tuning queries: the collection's
caption embeddings when it has them, else half collection vectors plus noise and half random
directions (:mod:`clipforge.search.tuning`). Every candidate's memory, build time, effort, recall
and latency are written to ``index.json`` with the reason for the choice.

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
import time
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

KINDS = ("flat", "ivfflat", "pq-rerank", "hnsw", "ivfpq")
HNSW_AUTO_LIMIT = 100_000  # larger collections get HNSW only when asked for (hours of build on few cores)
LATENCY_QUERIES = 50
HNSW_M, HNSW_EF_CONSTRUCTION = 32, 200
EXACT_LIMIT = 50_000
TUNING_QUERIES = 200
#: Efforts tried, in order, until the target recall is reached.
LADDERS = {"pq-rerank": [1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 1000],
           "hnsw": [16, 32, 64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096]}
#: Effort of an approximate index opened without a measured one (the exact index has none).
DEFAULT_EFFORT = {"pq-rerank": 20, "hnsw": 128, "ivfpq": 32, "ivfflat": 8, "milvus": 8}


EFFORT_MEANING = {"pq-rerank": "candidates per result", "hnsw": "efSearch", "ivfpq": "nprobe",
                  "ivfflat": "nprobe", "milvus": "nprobe"}
BACKENDS = ("faiss", "milvus")
#: Every kind an index folder may hold: the FAISS kinds and a Milvus collection.
ALL_KINDS = (*KINDS, "milvus")


def default_shards() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _nlist(n: int) -> int:
    return max(16, min(n // 39, int(4 * math.sqrt(n))))


def candidate_specs(n: int, d: int, threads: int | None = None) -> dict[str, dict[str, Any]]:
    """Every kind's build parameters and memory (MB) for ``n`` vectors of dimension ``d``."""
    m, nlist, mi = sub_quantizers(d), _nlist(n), divisor_at_most(d, d // 8)
    flat_mb = n * d * 4 / 2**20
    return {
        "flat": {"kind": "flat", "memory_mb": flat_mb},
        "ivfflat": {"kind": "ivfflat", "nlist": nlist, "memory_mb": flat_mb + nlist * d * 4 / 2**20},
        "pq-rerank": {"kind": "pq-rerank", "m": m, "nbits": 4, "shards": threads or default_shards(),
                      "memory_mb": n * (d * 2 + math.ceil(m / 2)) / 2**20},
        "hnsw": {"kind": "hnsw", "M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION,
                 "memory_mb": flat_mb + n * HNSW_M * 2 * 4 / 2**20},
        "ivfpq": {"kind": "ivfpq", "nlist": nlist, "m": mi, "nbits": 8, "memory_mb": n * mi / 2**20},
    }


def choose_index(n: int, d: int, memory_budget_mb: float | None = None, exact_limit: int = EXACT_LIMIT,
                 kind: str | None = None, threads: int | None = None) -> dict[str, Any]:
    """The kind (or, when it must be measured, the candidates) for ``n`` vectors of dimension ``d``.

    Returns a spec with its ``reason``; when several kinds fit and the collection is above
    ``exact_limit``, ``kind`` is ``"measure"`` and ``candidates`` lists the specs to compare.
    ``threads``: how many threads one query's scan of a pq-rerank index is split over.
    """
    if kind is not None and kind not in KINDS:
        raise ClipforgeError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")
    specs = candidate_specs(n, d, threads)
    if kind is not None:
        return {**specs[kind], "reason": f"asked for: {kind} ({specs[kind]['memory_mb']:.0f} MB)"}
    budget = memory_budget_mb if memory_budget_mb is not None else float("inf")
    flat = specs["flat"]
    if n <= exact_limit and flat["memory_mb"] <= budget:
        return {**flat, "reason": f"{n} vectors <= {exact_limit}: exact search ({flat['memory_mb']:.0f} MB)"}
    fits = [s for k, s in specs.items() if s["memory_mb"] <= budget and (k != "hnsw" or n <= HNSW_AUTO_LIMIT)]
    if not fits:
        small = specs["ivfpq"]
        return {**small, "reason": f"no kind fits the budget of {budget:.0f} MB; IVF-PQ is the smallest "
                                   f"({small['memory_mb']:.0f} MB)"}
    if len(fits) == 1:
        return {**fits[0], "reason": f"the only kind within the budget of {budget:.0f} MB "
                                     f"({fits[0]['memory_mb']:.0f} MB)"}
    return {"kind": "measure", "candidates": fits,
            "reason": f"{n} vectors > {exact_limit}: measured {', '.join(s['kind'] for s in fits)} "
                      f"(those within the budget{'' if budget == float('inf') else f' of {budget:.0f} MB'})"}


def build_backend(vectors: np.ndarray, spec: dict[str, Any]) -> FaissIndex | RerankedPQIndex:
    """A FAISS-backed index (the Milvus backend is built by :meth:`MilvusIndex.build`, which needs the metadata)."""
    if spec["kind"] == "pq-rerank":
        return RerankedPQIndex.build(vectors, spec["shards"])
    return FaissIndex.build(vectors, spec)


def open_backend(folder: Path, info: dict[str, Any]):
    if info["kind"] == "milvus":
        from clipforge.search.milvus_index import MilvusIndex

        return MilvusIndex.load(folder, info)
    if info["kind"] == "pq-rerank":
        return RerankedPQIndex.load(folder, info["shards"])
    return FaissIndex.load(folder, info["kind"])


def ladder(spec: dict[str, Any]) -> list[int]:
    if spec["kind"] in ("ivfpq", "ivfflat", "milvus"):
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
                       "effort": EFFORT_MEANING[spec["kind"]],
                       "recall_by_effort": table,
                       "columns": "effort, mean recall@10, mean recall@10 of the worst query group"}}
    if recall < target:
        spec["reason"] += f"; recall@10 only {recall:.3f} at the highest effort (target {target})"
    return spec


def tuning_queries(emb_dir: str | Path, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(queries, query groups, description): caption embeddings when the collection has them."""
    captions = read_caption_embeddings(emb_dir)
    if captions is not None and len(captions) >= 10:
        rng = np.random.default_rng(0)
        picks = np.sort(rng.choice(len(captions), min(TUNING_QUERIES, len(captions)), replace=False))
        return unit_rows(captions[picks]), None, "caption embeddings of the collection"
    queries, groups = synthetic_queries(vectors, TUNING_QUERIES, seed=0)
    return queries, groups, "queries: half collection vectors plus noise (cosine ~0.71), half random directions"


def query_latency_ms(index: FaissIndex | RerankedPQIndex, queries: np.ndarray, effort: int) -> float:
    """Median milliseconds of one-query searches for 10 results (as the service runs them)."""
    index.search(queries[:1], 10, effort)  # warm the memory map and thread pools
    times = []
    for q in queries[:LATENCY_QUERIES]:
        t0 = time.perf_counter()
        index.search(q[None], 10, effort)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def choose_by_measurement(vectors: np.ndarray, spec: dict[str, Any], queries: np.ndarray,
                          groups: np.ndarray | None, source: str, target: float,
                          say=lambda msg: None) -> tuple[dict[str, Any], FaissIndex | RerankedPQIndex]:
    """Build every candidate of ``spec``, tune it, time it; keep the fastest reaching ``target``.

    Exact search always reaches it; when no candidate does (exact over the budget), the one with the
    highest recall is kept. Returns the chosen spec (with the measured table) and its index.
    """
    rows, best, best_index = [], None, None
    for cand in spec["candidates"]:
        t0 = time.perf_counter()
        index = build_backend(vectors, cand)
        build_s = time.perf_counter() - t0
        if cand["kind"] == "flat":
            tuned = {**cand, "effort": None, "recall_at_10": 1.0}
        else:
            tuned = tune(index, {**cand, "reason": ""}, vectors, queries, groups, source, target)
        ms = query_latency_ms(index, queries, int(tuned["effort"] or 1))
        reached = tuned["recall_at_10"] >= target
        rows.append({"kind": cand["kind"], "memory_mb": round(cand["memory_mb"], 1), "build_s": round(build_s, 2),
                     "effort": tuned["effort"], "recall_at_10": round(tuned["recall_at_10"], 4),
                     "p50_ms": round(ms, 3), "reached_target": reached})
        say(f"  {cand['kind']:>9}: build {build_s:.1f} s, effort {tuned['effort']}, recall@10 "
            f"{tuned['recall_at_10']:.3f}, {ms:.2f} ms a query")
        key = (not reached, ms if reached else -tuned["recall_at_10"])
        if best is None or key < best[0]:
            best, best_index = (key, tuned, rows[-1]), index
        del index
    _, chosen, row = best
    others = "; ".join(f"{r['kind']} {r['p50_ms']:.2f} ms" + ("" if r["reached_target"] else " (target not reached)")
                       for r in rows if r is not row)
    verdict = "fastest reaching" if row["reached_target"] else "none reached; highest recall towards"
    chosen = {**chosen, "reason": f"{verdict} recall@10 {target} on {len(queries)} {source}: {row['kind']} at "
                                  f"{row['p50_ms']:.2f} ms a query (others: {others})",
              "choice": {"target_recall_at_10": target, "queries": source, "candidates": rows,
                         "columns": "memory MB, build seconds, tuned effort, recall@10 at it, median ms "
                                    "of one query for 10 results"}}
    chosen.pop("candidates", None)
    return chosen, best_index


def _caption_index(captions: np.ndarray, meta, folder: Path, image_kind: str, exact_limit: int, target: float,
                   threads: int | None) -> None:
    """An index of the caption embeddings (rows as the images'): exact when small, else the image index's kind."""
    n, d = captions.shape
    kind = "flat" if n <= exact_limit or image_kind == "flat" else \
        "pq-rerank" if image_kind == "milvus" else image_kind
    spec = choose_index(n, d, kind=kind, threads=threads)
    index = build_backend(captions, spec)
    if kind != "flat":
        queries, groups = synthetic_queries(captions, TUNING_QUERIES, seed=0)
        spec = tune(index, spec, captions, queries, groups, "caption vectors plus noise and random directions", target)
    folder.mkdir()
    index.save(folder)
    pq.write_table(meta, folder / "metadata.parquet")
    (folder / "index.json").write_text(json.dumps({"n": n, "dim": d, **spec, "of": "caption embeddings"}, indent=2))


def _milvus(vectors: np.ndarray, meta, folder: Path, emb_dir, exact_limit: int, uri: str | None, collection: str,
            target: float, say) -> tuple[dict[str, Any], Any]:
    from clipforge.search.milvus_index import MilvusIndex

    spec = MilvusIndex.spec(len(vectors), exact_limit, uri, collection)
    say(f"writing {len(vectors)} vectors and their metadata to Milvus: {spec['reason']}")
    index = MilvusIndex.build(vectors, meta, spec, folder)
    if spec["milvus"]["index_type"] != "FLAT":
        queries, groups, source = tuning_queries(emb_dir, vectors)
        spec = tune(index, spec, vectors, queries, groups, source, target)
        say(f"milvus: nprobe {spec['effort']}, recall@10 {spec['recall_at_10']:.3f}")
    return spec, index


def build_index(emb_dir: str | Path, out_dir: str | Path, memory_budget_mb: float | None = None,
                kind: str | None = None, dedup_threshold: float | None = None, target_recall: float = 0.95,
                exact_limit: int = EXACT_LIMIT, threads: int | None = None, verbose: bool = False,
                partial: bool = False, backend: str = "faiss", milvus_uri: str | None = None,
                milvus_collection: str = "clipforge") -> Path:
    """Build ``out_dir`` from the embeddings folder ``emb_dir`` (see the module docstring).

    An embeddings folder with parts missing (an embed still running or interrupted) is refused
    unless ``partial``: an index of part of a collection is rarely what was meant. ``backend="milvus"``
    writes the vectors and metadata into Milvus (:mod:`clipforge.search.milvus_index`) instead.
    """
    def say(msg: str) -> None:
        if verbose:
            log.info(msg)

    if not 0 < target_recall <= 1:
        raise ClipforgeError(f"--target-recall {target_recall}: expected a number in (0, 1]")
    if backend not in BACKENDS:
        raise ClipforgeError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "milvus" and kind is not None:
        raise ClipforgeError("--kind chooses a FAISS index; with --backend milvus the Milvus index type is chosen "
                             "from the size")
    vectors, meta, manifest = read_embeddings(emb_dir)
    done, n_parts, items = embedding_progress(emb_dir)
    if done < n_parts and not partial:
        raise ClipforgeError(f"{emb_dir}: {n_parts - done} of {n_parts} embedding parts are missing ({len(vectors)} of "
                             f"{items} items embedded); finish them by re-running the same clipforge embed command "
                             "(it resumes), or pass --partial to index what is there")
    vectors = unit_rows(vectors)
    n, d = vectors.shape
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if backend == "milvus":
        spec, index = _milvus(vectors, meta, tmp, emb_dir, exact_limit, milvus_uri, milvus_collection,
                              target_recall, say)
    else:
        spec = choose_index(n, d, memory_budget_mb, exact_limit, kind, threads)
        if spec["kind"] == "flat":
            say(f"building a flat index of {n} vectors (d={d}): {spec['reason']}")
            index = build_backend(vectors, spec)
        else:
            queries, groups, source = tuning_queries(emb_dir, vectors)
            say(f"recall@10 is measured against exact search on {len(queries)} {source}")
            if spec["kind"] == "measure":
                say(f"{spec['reason']}")
                spec, index = choose_by_measurement(vectors, spec, queries, groups, source, target_recall, say)
            else:
                say(f"building a {spec['kind']} index of {n} vectors (d={d}): {spec['reason']}")
                index = build_backend(vectors, spec)
                spec = tune(index, spec, vectors, queries, groups, source, target_recall)
            say(f"{spec['kind']}: effort {spec['effort']} ({spec['tuning']['effort']}), "
                f"recall@10 {spec['recall_at_10']:.3f}")
    index.save(tmp)
    pq.write_table(meta, tmp / "metadata.parquet")
    captions = read_caption_embeddings(emb_dir)
    if captions is not None and len(captions) == n:
        say("indexing the caption embeddings too (for matching captions instead of images)")
        _caption_index(unit_rows(captions), meta, tmp / "captions", spec["kind"], exact_limit, target_recall, threads)
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
