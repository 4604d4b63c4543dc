"""Contrastive pair loss (Hadsell, Chopra & LeCun 2006), with the double-margin variant.

For a distance d: positive pairs cost relu(d - m_pos), negative pairs relu(m_neg - d). With a
similarity s (cosine, dot) the roles flip: relu(m_pos - s) and relu(s - m_neg). m_pos = 0 is the
original loss; m_pos > 0 is the double-margin variant (positives need only come within m_pos).
The positive and negative terms are reduced separately and added (as pytorch-metric-learning).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.losses.distances import is_similarity, pairwise
from clipforge.losses.indices import Pairs, all_pairs, check_reference
from clipforge.losses.reductions import reduce


class ContrastivePairLoss(nn.Module):
    """Args:
    pos_margin: positives cost nothing within this distance (beyond this similarity).
    neg_margin: negatives cost nothing beyond this distance (within this similarity).
    distance: ``l2``, ``squared_l2``, ``cosine`` or ``dot``.
    reduction: ``mean_nonzero`` (default), ``mean``, ``sum`` or ``none`` (then returns (pos, neg)).
    """

    def __init__(self, pos_margin: float = 0.0, neg_margin: float = 1.0, distance: str = "l2",
                 reduction: str = "mean_nonzero") -> None:
        super().__init__()
        self.pos_margin, self.neg_margin = pos_margin, neg_margin
        self.distance, self.reduction = distance, reduction

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None, pairs: Pairs | None = None,
                ref_embeddings: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None) -> torch.Tensor:
        if pairs is None:
            check_reference(ref_embeddings, ref_labels)
            if labels is None:
                raise ValueError("pass labels or explicit pairs (a1, p, a2, n)")
            pairs = all_pairs(labels, ref_labels)
        a1, p, a2, n = pairs
        mat = pairwise(embeddings, ref_embeddings, self.distance)
        pos_d, neg_d = mat[a1, p], mat[a2, n]
        if is_similarity(self.distance):
            pos, neg = F.relu(self.pos_margin - pos_d), F.relu(neg_d - self.neg_margin)
        else:
            pos, neg = F.relu(pos_d - self.pos_margin), F.relu(self.neg_margin - neg_d)
        if self.reduction == "none":
            return pos, neg  # type: ignore[return-value]
        return reduce(pos, self.reduction, embeddings) + reduce(neg, self.reduction, embeddings)
