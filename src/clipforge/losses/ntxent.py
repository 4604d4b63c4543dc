"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. 2020, eq. 1),
and its supervised form over labels.

SimCLR: 2N views z (two per image, view k and k+N are positives); for each view i with positive
j: l(i, j) = -log( exp(sim(z_i, z_j)/t) / sum_{k != i} exp(sim(z_i, z_k)/t) ), averaged over all 2N.

Supervised (pytorch-metric-learning's NTXentLoss with labels): each positive pair (a, p) is a
term whose denominator holds p and every negative of a (other positives are left out), averaged
over positive pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.losses.reductions import zero_like_graph


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's loss for two views [N, D] each (2N samples)."""
    if z1.shape[0] == 0:
        return zero_like_graph(z1, z2)
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    n = z1.shape[0]
    sim = (z @ z.T) / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def supervised_nt_xent(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """NT-Xent over labels: a term per positive pair, its negatives in the denominator."""
    z = F.normalize(embeddings, dim=-1)
    sim = (z @ z.T) / temperature
    same = labels[:, None] == labels[None, :]
    pos = same.clone()
    pos.fill_diagonal_(False)
    a, p = pos.nonzero(as_tuple=True)
    if a.numel() == 0:
        return zero_like_graph(embeddings)
    neg = ~same
    neg_lse = torch.logsumexp(sim.masked_fill(~neg, float("-inf")), dim=1)  # -inf where no negatives
    pos_sim = sim[a, p]
    denom = torch.logaddexp(pos_sim, neg_lse[a])
    return (denom - pos_sim).mean()


class NTXentLoss(nn.Module):
    """``forward(z1, z2)`` for two views, or ``forward(embeddings, labels=...)`` supervised."""

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, z1: torch.Tensor, z2: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is not None:
            return supervised_nt_xent(z1, labels, self.temperature)
        if z2 is None:
            raise ValueError("pass two views (z1, z2) or embeddings with labels")
        return nt_xent(z1, z2, self.temperature)
