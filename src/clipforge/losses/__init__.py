"""The contrastive loss family, one small module per loss.

Shared notions: :mod:`~clipforge.losses.distances` (l2 / squared_l2 on normalised embeddings,
cosine, dot), :mod:`~clipforge.losses.reductions` (mean, sum, mean of non-zero terms) and
:mod:`~clipforge.losses.indices` (pairs and triplets from labels). Every loss returns a 0 that keeps
the autograd graph, never NaN, when a batch has no positives or no active terms.
"""

from clipforge.losses.clip import CLIPLoss, clip_loss
from clipforge.losses.info_nce import InfoNCELoss, info_nce
from clipforge.losses.margin import MarginLoss
from clipforge.losses.miners import distance_weighted_triplets, hard_negative_triplets, semihard_triplets
from clipforge.losses.multiple_negatives import multiple_negatives_ranking_loss
from clipforge.losses.nca import nca
from clipforge.losses.nce import nce_loss, negative_sampling_loss
from clipforge.losses.ntxent import NTXentLoss, nt_xent, supervised_nt_xent
from clipforge.losses.pair import ContrastivePairLoss
from clipforge.losses.siglip import SigLIPLoss, siglip_loss
from clipforge.losses.supcon import SupConLoss, supcon
from clipforge.losses.triplet import TripletMarginLoss

__all__ = [
    "CLIPLoss", "ContrastivePairLoss", "InfoNCELoss", "MarginLoss", "NTXentLoss", "SigLIPLoss", "SupConLoss",
    "TripletMarginLoss", "clip_loss", "distance_weighted_triplets", "hard_negative_triplets", "info_nce", "nca",
    "multiple_negatives_ranking_loss", "negative_sampling_loss", "nce_loss", "nt_xent", "semihard_triplets",
    "siglip_loss", "supcon", "supervised_nt_xent",
]
