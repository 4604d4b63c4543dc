"""Miners: choose which pairs or triplets a loss sees.

* :func:`hard_negative_triplets` -- for each (anchor, positive), the closest negative.
* :func:`semihard_triplets` -- triplets whose negative is farther than the positive but within the
  margin (FaceNet, Schroff et al. 2015): 0 < d(a,n) - d(a,p) <= margin.
* :func:`distance_weighted_triplets` -- Wu et al. 2017: one negative per (anchor, positive), drawn
  with weight proportional to 1 / q(d), q(d) = d^(n-2) (1 - d^2/4)^((n-3)/2) the density of
  distances between random points on the unit sphere in n dimensions; distances are clipped below
  at ``cutoff`` (0.5) and negatives at or beyond ``nonzero_loss_cutoff`` (1.4) get weight 0.
"""

from __future__ import annotations

import torch

from clipforge.losses.distances import is_similarity, pairwise
from clipforge.losses.indices import Triplets, all_triplets


def _dist(embeddings: torch.Tensor, distance: str) -> tuple[torch.Tensor, bool]:
    return pairwise(embeddings.detach(), None, distance), is_similarity(distance)


def semihard_triplets(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.2,
                      distance: str = "l2") -> Triplets:
    a, p, n = all_triplets(labels)
    mat, sim = _dist(embeddings, distance)
    gap = (mat[a, p] - mat[a, n]) if sim else (mat[a, n] - mat[a, p])
    keep = (gap > 0) & (gap <= margin)
    return a[keep], p[keep], n[keep]


def hard_negative_triplets(embeddings: torch.Tensor, labels: torch.Tensor, distance: str = "l2") -> Triplets:
    mat, sim = _dist(embeddings, distance)
    same = labels[:, None] == labels[None, :]
    pos = same.clone()
    pos.fill_diagonal_(False)
    a, p = pos.nonzero(as_tuple=True)
    if a.numel() == 0:
        return a, p, p
    masked = mat.masked_fill(same, float("-inf") if sim else float("inf"))
    n = masked.argmax(dim=1) if sim else masked.argmin(dim=1)
    has_neg = (~same).any(dim=1)
    keep = has_neg[a]
    return a[keep], p[keep], n[a[keep]]


def distance_weights(distances: torch.Tensor, dim: int, cutoff: float = 0.5,
                     nonzero_loss_cutoff: float = 1.4, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Sampling probabilities proportional to 1/q(d), normalised over each row's valid entries.

    The log-weights span hundreds of nats at d >= 160 (about 0.7 d between the cutoff and sqrt(2)):
    they are normalised per row (per anchor) in log space, in float64, over the entries that may be
    drawn (``valid`` and below ``nonzero_loss_cutoff``), so no row underflows to all zeros. Rows
    without a valid entry are 0.
    """
    d = distances.detach().double().clamp(min=cutoff)
    log_w = (2.0 - dim) * torch.log(d) - ((dim - 3) / 2.0) * torch.log((1.0 - 0.25 * d * d).clamp(min=1e-300))
    ok = distances < nonzero_loss_cutoff
    if valid is not None:
        ok = ok & valid
    probs = torch.softmax(log_w.masked_fill(~ok, float("-inf")), dim=-1)
    return probs.masked_fill(~ok, 0.0)  # a row with nothing valid is NaN after the softmax


def distance_weighted_triplets(embeddings: torch.Tensor, labels: torch.Tensor, cutoff: float = 0.5,
                               nonzero_loss_cutoff: float = 1.4, generator: torch.Generator | None = None) -> Triplets:
    """One negative per (anchor, positive) pair, sampled by inverse distance density.

    pytorch-metric-learning's ``DistanceWeightedMiner`` draws the same distribution but takes
    n_p random positives per anchor (with replacement); here each positive is used once (n_p - 1
    triplets per anchor, n_p the size of its class).
    """
    mat = pairwise(embeddings.detach(), None, "l2")
    same = labels[:, None] == labels[None, :]
    w = distance_weights(mat, embeddings.shape[1], cutoff, nonzero_loss_cutoff, valid=~same)
    pos = same.clone()
    pos.fill_diagonal_(False)
    a, p = pos.nonzero(as_tuple=True)
    rows = w[a]
    ok = rows.sum(dim=1) > 0
    a, p, rows = a[ok], p[ok], rows[ok]
    if a.numel() == 0:
        return a, p, p
    n = torch.multinomial(rows, 1, generator=generator).squeeze(1)
    return a, p, n
