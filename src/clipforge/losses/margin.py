"""Margin-based loss of Wu, Manmatha, Smola & Krähenbühl 2017, "Sampling matters in deep
embedding learning" (equations 4-5).

For a triplet (a, p, n) with boundary beta and margin alpha:
relu(d(a,p) - beta + alpha) + relu(beta - d(a,n) + alpha). beta can be learned, once or per class
(beta_{y_a}), with the regulariser nu * beta. As in pytorch-metric-learning, the summed terms are
divided by the number of active (non-zero) positive and negative terms; with per-class beta the
regulariser is summed per triplet and divided by the same count, with one learned beta it is added
as nu * beta.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.losses.distances import pairwise
from clipforge.losses.indices import Triplets, all_triplets, check_reference
from clipforge.losses.reductions import zero_like_graph


class MarginLoss(nn.Module):
    """Args:
    alpha: margin around the boundary.
    beta: initial boundary between positive and negative distances.
    learn_beta: make beta a parameter.
    num_classes: with ``learn_beta``, one beta per class (labels index them).
    nu: weight of the beta regulariser (only with ``learn_beta``).
    distance: a distance (``l2`` as in the paper, or ``squared_l2``).
    """

    def __init__(self, alpha: float = 0.2, beta: float = 1.2, learn_beta: bool = False, num_classes: int | None = None,
                 nu: float = 0.0, distance: str = "l2") -> None:
        super().__init__()
        self.alpha, self.nu, self.distance, self.learn_beta = alpha, nu, distance, learn_beta
        # float64: the boundary is a few scalars, and float32 would round the initial value.
        init = torch.full((num_classes or 1,), float(beta), dtype=torch.float64)
        self.beta = nn.Parameter(init, requires_grad=learn_beta)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, triplets: Triplets | None = None,
                ref_embeddings: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None) -> torch.Tensor:
        """Anchors come from ``embeddings``; positives and negatives from the reference set if given."""
        if triplets is None:
            check_reference(ref_embeddings, ref_labels)
            triplets = all_triplets(labels, ref_labels)
        a, p, n = triplets
        if a.numel() == 0:
            return zero_like_graph(embeddings, self.beta)
        mat = pairwise(embeddings, ref_embeddings, self.distance)
        beta = self.beta.to(mat.dtype)
        beta = beta[labels[a]] if beta.numel() > 1 else beta
        pos = F.relu(mat[a, p] - beta + self.alpha)
        neg = F.relu(beta - mat[a, n] + self.alpha)
        active = int((pos > 0).sum() + (neg > 0).sum())
        loss = (pos + neg).sum()
        reg = torch.zeros((), dtype=mat.dtype)
        if self.learn_beta and self.nu:
            reg = (self.nu * beta).sum() if self.beta.numel() > 1 else self.nu * beta.sum()
        if self.beta.numel() > 1:
            return (loss + reg) / active if active else (loss + reg) * 0
        return (loss / active if active else loss * 0) + reg
