"""Projection and prediction heads of SimCLR, BYOL and SimSiam, with each paper's default sizes."""

from __future__ import annotations

from torch import nn


def simclr_projector(in_dim: int, hidden: int = 2048, out: int = 128) -> nn.Module:
    """SimCLR (Chen et al. 2020, sec. 2.1): Linear-BN-ReLU-Linear; the paper's output is 128-d."""
    return nn.Sequential(nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out))


def byol_mlp(in_dim: int, hidden: int = 4096, out: int = 256) -> nn.Module:
    """BYOL (Grill et al. 2020, sec. 3.3): projector and predictor are both Linear(4096)-BN-ReLU-Linear(256)."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out))


def simsiam_projector(in_dim: int, dim: int = 2048) -> nn.Module:
    """SimSiam (Chen & He 2021, sec. 4): three layers of 2048 with BN, the output BN without affine."""
    return nn.Sequential(
        nn.Linear(in_dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
        nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
        nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim, affine=False),
    )


def simsiam_predictor(dim: int = 2048, bottleneck: int = 512) -> nn.Module:
    """SimSiam's predictor: a 512-d bottleneck, Linear-BN-ReLU-Linear."""
    return nn.Sequential(nn.Linear(dim, bottleneck, bias=False), nn.BatchNorm1d(bottleneck), nn.ReLU(inplace=True),
                         nn.Linear(bottleneck, dim))
