"""Index tuples from labels: positive/negative pairs and triplets.

Pairs are ordered ``(anchor, other)`` with ``anchor != other`` (so each unordered pair appears twice,
as in pytorch-metric-learning). With a reference set (``ref_labels``), anchors come from the
embeddings and others from the reference, and no pair is excluded for sharing an index.
"""

from __future__ import annotations

import torch

Pairs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # a1, p, a2, n
Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # a, p, n


def _masks(labels: torch.Tensor, ref_labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    ref = labels if ref_labels is None else ref_labels
    same = labels[:, None] == ref[None, :]
    if ref_labels is None:
        same.fill_diagonal_(False)
    diff = labels[:, None] != ref[None, :]
    return same, diff


def check_reference(ref_embeddings: torch.Tensor | None, ref_labels: torch.Tensor | None) -> None:
    """A reference set needs its own labels (reusing ``labels`` would silently pair the wrong rows)."""
    if (ref_embeddings is None) != (ref_labels is None):
        given, missing = ("ref_embeddings", "ref_labels") if ref_labels is None else ("ref_labels", "ref_embeddings")
        raise ValueError(f"{given} was given without {missing}: pass both for a reference set, or neither")
    if ref_embeddings is not None and ref_embeddings.shape[0] != ref_labels.shape[0]:  # type: ignore[union-attr]
        raise ValueError(f"ref_embeddings has {ref_embeddings.shape[0]} rows but ref_labels "
                         f"{ref_labels.shape[0]}")  # type: ignore[union-attr]


def all_pairs(labels: torch.Tensor, ref_labels: torch.Tensor | None = None) -> Pairs:
    """Every positive pair (same label) and every negative pair (different labels)."""
    same, diff = _masks(labels, ref_labels)
    a1, p = same.nonzero(as_tuple=True)
    a2, n = diff.nonzero(as_tuple=True)
    return a1, p, a2, n


def all_triplets(labels: torch.Tensor, ref_labels: torch.Tensor | None = None) -> Triplets:
    """Every (anchor, positive, negative) with label[a] == label[p] != label[n]."""
    same, diff = _masks(labels, ref_labels)
    trip = same[:, :, None] & diff[:, None, :]
    a, p, n = trip.nonzero(as_tuple=True)
    return a, p, n


def pairs_from_triplets(t: Triplets) -> Pairs:
    a, p, n = t
    return a, p, a, n
