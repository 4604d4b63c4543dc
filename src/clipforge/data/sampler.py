"""Deterministic, resumable, rank-sharded batches.

Epoch e's order is a permutation drawn from ``seed + e``; global batch j is its j-th slice of
``batch_size`` (the last incomplete one is dropped, as contrastive training usually does), and
rank r takes the r-th of ``world_size`` equal parts of it. So every sample is seen at most once
per epoch, the global batches are the same whatever the number of ranks, and resuming at batch j
only needs j.
"""

from __future__ import annotations

import torch

from clipforge.errors import ConfigError


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                  start: int = 0) -> list[list[int]]:
    if batch_size % world_size:
        raise ConfigError(f"batch_size={batch_size} must be divisible by the number of processes ({world_size})")
    if n < batch_size:
        raise ConfigError(f"the training set has {n} usable pairs, fewer than batch_size={batch_size}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    per_rank = batch_size // world_size
    batches = []
    for j in range(start, n // batch_size):
        chunk = perm[j * batch_size : (j + 1) * batch_size]
        batches.append(chunk[rank * per_rank : (rank + 1) * per_rank])
    return batches


def steps_per_epoch(n: int, batch_size: int) -> int:
    return n // batch_size
