"""Distances and similarities between embeddings, shared by every loss.

``"l2"``: Euclidean distance of L2-normalised embeddings (in [0, 2]); ``"squared_l2"``: its
square; ``"cosine"``: cosine similarity (a similarity: larger is closer); ``"dot"``: raw dot
product (a similarity, no normalisation).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Distance = Literal["l2", "squared_l2", "cosine", "dot"]
DISTANCES: tuple[str, ...] = ("l2", "squared_l2", "cosine", "dot")


def is_similarity(distance: str) -> bool:
    """True where larger means closer (cosine, dot)."""
    check(distance)
    return distance in ("cosine", "dot")


def check(distance: str) -> None:
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, got {distance!r}")


def pairwise(x: torch.Tensor, y: torch.Tensor | None = None, distance: str = "l2") -> torch.Tensor:
    """[N, D] x [M, D] -> [N, M] distances (or similarities)."""
    check(distance)
    y = x if y is None else y
    if distance == "dot":
        return x @ y.T
    x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    sim = x @ y.T
    if distance == "cosine":
        return sim
    # |x - y|^2 = 2 - 2 cos for unit vectors; clamp keeps the sqrt's gradient finite at 0.
    sq = (2 - 2 * sim).clamp(min=0)
    if distance == "squared_l2":
        return sq
    return torch.sqrt(sq.clamp(min=1e-12)) * (sq > 0)
