"""How per-term losses become one number. Every reduction keeps the autograd graph and gives 0
(not NaN) when there are no terms or none is active."""

from __future__ import annotations

from typing import Literal

import torch

Reduction = Literal["mean", "sum", "mean_nonzero", "none"]


def zero_like_graph(*tensors: torch.Tensor) -> torch.Tensor:
    """A scalar 0 connected to the inputs' graph, so ``backward()`` still works."""
    return sum((t.sum() * 0 for t in tensors if t.requires_grad), torch.zeros(()))  # type: ignore[return-value]


def reduce(losses: torch.Tensor, reduction: str, *graph: torch.Tensor) -> torch.Tensor:
    """``mean``, ``sum``, ``mean_nonzero`` (mean of the terms above zero) or ``none``."""
    if reduction == "none":
        return losses
    if losses.numel() == 0:
        return zero_like_graph(losses, *graph)
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        return losses.mean()
    if reduction == "mean_nonzero":
        active = losses > 0
        n = int(active.sum())
        return losses.sum() / n if n else losses.sum() * 0
    raise ValueError(f"reduction must be mean, sum, mean_nonzero or none, got {reduction!r}")
