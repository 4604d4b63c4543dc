"""Multiple-negatives ranking loss (Henderson et al. 2017, "Efficient natural language response
suggestion for smart reply"; sentence-transformers' ``MultipleNegativesRankingLoss``).

For N (anchor, positive) pairs and optional K hard negatives per anchor, each anchor picks its
positive among all N positives and all N*K hard negatives of the batch, from scaled cosine
similarities: L = CE(scale * cos(a_i, [p_1..p_N, n_11..n_NK]), i). ``symmetric`` averages it with
the backward direction, each positive picking its anchor among the N anchors (sentence-transformers'
``directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction"``). With a second
dropout view of the same sentences as the positives this is unsupervised SimCSE (Gao et al. 2021).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipforge.losses.reductions import zero_like_graph


def multiple_negatives_ranking_loss(anchors: torch.Tensor, positives: torch.Tensor,
                                    negatives: torch.Tensor | None = None, scale: float = 20.0,
                                    symmetric: bool = False) -> torch.Tensor:
    """Args:
    anchors, positives: [N, D] (normalised here). negatives: [N, K, D] hard negatives or ``None``.
    scale: 1 / temperature (sentence-transformers' default 20, i.e. temperature 0.05).
    """
    if anchors.shape[0] == 0:
        return zero_like_graph(anchors, positives)
    a, p = F.normalize(anchors.float(), dim=-1), F.normalize(positives.float(), dim=-1)
    docs = p if negatives is None else torch.cat([p, F.normalize(negatives.float(), dim=-1).flatten(0, 1)])
    target = torch.arange(a.shape[0], device=a.device)
    loss = F.cross_entropy(scale * a @ docs.T, target)
    if symmetric:
        loss = (loss + F.cross_entropy(scale * p @ a.T, target)) / 2
    return loss
