"""Neighbourhood components analysis loss (Goldberger et al. 2005; Movshovitz-Attias et al. 2017).

p_i = sum over same-label j != i of softmax_j(-scale * d(i, j)^2) (j over all others); the loss is
-log p_i averaged over samples with p_i > 0. Squared Euclidean distance of normalised embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clipforge.losses.distances import pairwise
from clipforge.losses.reductions import zero_like_graph


def nca(embeddings: torch.Tensor, labels: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    d = pairwise(embeddings, None, "squared_l2")
    logits = (-scale * d).masked_fill(torch.eye(d.shape[0], dtype=torch.bool, device=d.device), float("-inf"))
    prob = F.softmax(logits, dim=1)
    same = (labels[:, None] == labels[None, :]).to(prob.dtype)
    p = (prob * same).sum(dim=1)
    keep = p > 0
    return -torch.log(p[keep]).mean() if keep.any() else zero_like_graph(embeddings)
