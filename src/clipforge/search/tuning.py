"""Measured recall: choose an approximate index's effort as the least that reaches a target recall@10.

Recall@k of an approximate search is the fraction of the exact top-k it returns, averaged over
queries. At build time ``clipforge index`` measures it on held-out queries for a ladder of efforts
and records the whole ladder in ``index.json``, so the chosen effort is an observation, not a guess.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12))


def perturbed_queries(vectors: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """``count`` collection vectors plus isotropic noise of the same norm (cosine ~0.71 to their source)."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(vectors), size=min(count, len(vectors)), replace=False)
    base = np.asarray(vectors[np.sort(picks)], dtype=np.float32)
    noise = unit_rows(rng.standard_normal(base.shape, dtype=np.float32))
    return unit_rows(unit_rows(base) + noise)


def synthetic_queries(vectors: np.ndarray, count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Half :func:`perturbed_queries`, half uniformly random directions (near no vector: the hardest
    case), and a group label per query (0 near, 1 random)."""
    near = perturbed_queries(vectors, count - count // 2, seed)
    far = unit_rows(np.random.default_rng(seed + 1).standard_normal((count // 2, vectors.shape[1]), dtype=np.float32))
    return np.vstack([near, far]), np.repeat([0, 1], [len(near), len(far)])


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int, block: int = 65536) -> np.ndarray:
    """Ids of the exact top-``k`` inner products, in blocks of the collection (ties: lower id first)."""
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(vectors), block):
        s = queries @ np.asarray(vectors[start : start + block], dtype=np.float32).T
        ids = np.broadcast_to(np.arange(start, start + s.shape[1]), s.shape)
        cat_s, cat_i = np.concatenate([best_s, s], axis=1), np.concatenate([best_i, ids], axis=1)
        order = np.lexsort((cat_i, -cat_s), axis=1)[:, :k] if cat_s.shape[1] <= k else _top_rows(cat_s, cat_i, k)
        best_s, best_i = np.take_along_axis(cat_s, order, 1), np.take_along_axis(cat_i, order, 1)
    return best_i


def _top_rows(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    s, i = np.take_along_axis(scores, part, 1), np.take_along_axis(ids, part, 1)
    return np.take_along_axis(part, np.lexsort((i, -s), axis=1), 1)


def recall_per_query(truth: np.ndarray, found: np.ndarray) -> np.ndarray:
    """|found ∩ truth| / |truth| for each query (rows of ids; -1 in ``found`` is a miss)."""
    k = truth.shape[1]
    return np.array([len(set(t.tolist()) & set(f.tolist())) / k for t, f in zip(truth, found)])


def recall_at_k(truth: np.ndarray, found: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / |truth|."""
    return float(recall_per_query(truth, found).mean())


def tune_effort(search: Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray]], queries: np.ndarray,
                truth: np.ndarray, ladder: Sequence[int], target: float,
                groups: np.ndarray | None = None) -> tuple[int, float, list[list[float]]]:
    """The least effort in ``ladder`` whose recall reaches ``target`` (else the last), its recall, and the table.

    "Reaches" means with margin for the sample, in every group of queries (``groups``: a label per
    query, e.g. near and far ones): the group's mean recall minus two standard errors is at least
    ``target``, so fresh queries of each kind reach it too. Table rows: effort, mean recall, and the
    worst group's mean recall.
    """
    labels = np.zeros(len(queries), dtype=int) if groups is None else np.asarray(groups)
    table: list[list[float]] = []
    for effort in ladder:
        _, found = search(queries, truth.shape[1], effort)
        per_query = recall_per_query(truth, found)
        means, bounds = [], []
        for g in np.unique(labels):
            r = per_query[labels == g]
            means.append(r.mean())
            bounds.append(r.mean() - 2 * r.std() / np.sqrt(len(r)))
        table.append([effort, round(float(per_query.mean()), 4), round(float(min(means)), 4)])
        if min(bounds) >= target:
            break
    return int(table[-1][0]), float(table[-1][1]), table
