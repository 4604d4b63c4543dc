"""Ranking metrics for retrieval with several relevant documents per query (BEIR / MTEB definitions,
binary relevance, as ``pytrec_eval`` computes them).

For a query with relevant set R and the candidates sorted by score (ties by index):

* ``recall@k`` = |R in the top k| / |R|;
* ``mrr@k`` = 1 / rank of the first relevant candidate if it is in the top k, else 0;
* ``ndcg@k`` = DCG@k / IDCG@k with DCG@k = sum over relevant hits at ranks r <= k of 1 / log2(r + 1)
  and IDCG@k the DCG of a ranking with every relevant document first.

Each is averaged over the queries that have at least one relevant document.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def ranking_metrics(scores: torch.Tensor, relevant: Sequence[set[int]], ks: Sequence[int] = (1, 10),
                    ndcg_k: int = 10, mrr_k: int = 10) -> dict[str, float]:
    """Args:
    scores: [Q, C] similarity of each query to each candidate. relevant: per query, the indices of
    its relevant candidates (queries with none are left out).
    """
    keep = [i for i, r in enumerate(relevant) if r]
    if not keep:
        raise ValueError("no query has a relevant candidate")
    depth = min(scores.shape[1], max(*ks, ndcg_k, mrr_k))
    order = torch.sort(scores[keep], dim=1, descending=True, stable=True).indices[:, :depth]
    hits = torch.zeros(len(keep), depth)
    for row, q in enumerate(keep):
        hits[row] = torch.tensor([int(c) in relevant[q] for c in order[row].tolist()], dtype=torch.float)
    n_rel = torch.tensor([len(relevant[q]) for q in keep], dtype=torch.float)
    out = {f"recall@{k}": (hits[:, :k].sum(1) / n_rel).mean().item() for k in ks}
    ranks = torch.arange(1, depth + 1, dtype=torch.float)
    first = torch.where(hits[:, :mrr_k].any(1), 1.0 / (hits[:, :mrr_k].argmax(1) + 1).float(), torch.zeros(()))
    out[f"mrr@{mrr_k}"] = first.mean().item()
    discount = 1.0 / torch.log2(ranks[:ndcg_k] + 1)
    dcg = (hits[:, :ndcg_k] * discount[: hits[:, :ndcg_k].shape[1]]).sum(1)
    ideal = torch.stack([discount[: int(min(n, ndcg_k))].sum() for n in n_rel.tolist()])
    out[f"ndcg@{ndcg_k}"] = (dcg / ideal).mean().item()
    return out
