"""InfoNCE (van den Oord et al. 2018, "Representation learning with contrastive predictive coding").

Each query has one positive key and M negative keys; the loss is the cross-entropy of picking the
positive among the M + 1 candidates from their scaled similarities:
-log( exp(s(q, k+) / t) / sum_k exp(s(q, k) / t) ). With ``negatives=None`` the other rows'
positives are the negatives (in-batch, as in CLIP's one direction).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.losses.reductions import zero_like_graph


def info_nce(query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor | None = None,
             temperature: float | torch.Tensor = 0.1, normalize: bool = True, reduction: str = "mean") -> torch.Tensor:
    """Args:
    query: [N, D]; positive: [N, D]; negatives: [N, M, D] per query, [M, D] shared, or ``None``
    for in-batch negatives.
    """
    if query.shape[0] == 0 and reduction != "none":
        return zero_like_graph(query, positive, *(() if negatives is None else (negatives,)))
    if normalize:
        query, positive = F.normalize(query, dim=-1), F.normalize(positive, dim=-1)
        negatives = None if negatives is None else F.normalize(negatives, dim=-1)
    if negatives is None:
        logits = query @ positive.T
        target = torch.arange(query.shape[0], device=query.device)
    else:
        pos = (query * positive).sum(-1, keepdim=True)
        neg = query @ negatives.T if negatives.ndim == 2 else torch.einsum("nd,nmd->nm", query, negatives)
        logits = torch.cat([pos, neg], dim=1)
        target = torch.zeros(query.shape[0], dtype=torch.long, device=query.device)
    return F.cross_entropy(logits / temperature, target, reduction=reduction)


class InfoNCELoss(nn.Module):
    def __init__(self, temperature: float = 0.1, normalize: bool = True) -> None:
        super().__init__()
        self.temperature, self.normalize = temperature, normalize

    def forward(self, query: torch.Tensor, positive: torch.Tensor,
                negatives: torch.Tensor | None = None) -> torch.Tensor:
        return info_nce(query, positive, negatives, self.temperature, self.normalize)
