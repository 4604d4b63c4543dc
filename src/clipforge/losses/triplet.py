"""Triplet margin loss (Weinberger & Saul 2009; Schroff et al. 2015, FaceNet).

For a triplet (a, p, n): relu(d(a,p) - d(a,n) + margin). ``swap`` (Balntas et al. 2016) uses
min(d(a,n), d(p,n)) as the negative distance; ``softplus`` replaces the hinge by
log(1 + exp(.)) (the soft-margin form, Hermans et al. 2017). With a similarity the signs flip.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.losses.distances import is_similarity, pairwise
from clipforge.losses.indices import Triplets, all_triplets, check_reference
from clipforge.losses.reductions import reduce


class TripletMarginLoss(nn.Module):
    """Args:
    margin: required gap between the negative and the positive distance.
    swap: use the harder of d(a, n) and d(p, n).
    softplus: smooth soft-plus instead of the hinge.
    distance: ``l2``, ``squared_l2``, ``cosine`` or ``dot``.
    reduction: ``mean_nonzero`` (default), ``mean``, ``sum`` or ``none``.
    """

    def __init__(self, margin: float = 0.05, swap: bool = False, softplus: bool = False, distance: str = "l2",
                 reduction: str = "mean_nonzero") -> None:
        super().__init__()
        self.margin, self.swap, self.softplus = margin, swap, softplus
        self.distance, self.reduction = distance, reduction

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None, triplets: Triplets | None = None,
                ref_embeddings: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None) -> torch.Tensor:
        if triplets is None:
            check_reference(ref_embeddings, ref_labels)
            if labels is None:
                raise ValueError("pass labels or explicit triplets (a, p, n)")
            triplets = all_triplets(labels, ref_labels)
        a, p, n = triplets
        ref = embeddings if ref_embeddings is None else ref_embeddings
        mat = pairwise(embeddings, ref, self.distance)
        ap, an = mat[a, p], mat[a, n]
        sim = is_similarity(self.distance)
        if self.swap:
            pn = pairwise(ref, ref, self.distance)[p, n]
            an = torch.maximum(an, pn) if sim else torch.minimum(an, pn)
        violation = (an - ap if sim else ap - an) + self.margin
        losses = F.softplus(violation) if self.softplus else F.relu(violation)
        return reduce(losses, self.reduction, embeddings)
