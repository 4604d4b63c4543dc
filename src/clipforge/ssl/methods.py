"""SimCLR, BYOL and SimSiam as modules: ``loss = method(view1, view2)``; the encoder is ``method.encoder``.

* SimCLR (Chen et al. 2020): NT-Xent over the 2N projected views (clipforge.losses.nt_xent).
* BYOL (Grill et al. 2020): an online network (encoder, projector, predictor) predicts a target
  network's projection of the other view; the target is an exponential moving average of the
  online encoder and projector, with tau_k = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2 and
  tau_base = 0.996; loss 2 - 2 cos, symmetrised. The target gets no gradient.
* SimSiam (Chen & He 2021): D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2 with D the negative
  cosine similarity.

Multi-crop (SwAV, Caron et al. 2020, sec. 3.2): ``small`` views (low-resolution crops) are extra
positives of each of the two global views; only the global views are targets (BYOL's target network
and SimSiam's stop-gradient branch see them alone). The loss averages the pairs (global i, view
j != i), scaled so that no small view gives each paper's loss exactly.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.losses.distributed import all_gather_with_grad
from clipforge.losses.ntxent import nt_xent
from clipforge.ssl.heads import byol_mlp, simclr_projector, simsiam_predictor, simsiam_projector


class SimCLR(nn.Module):
    """Args: encoder (images -> [N, d] features), feature width d, temperature tau, head sizes."""

    def __init__(self, encoder: nn.Module, dim: int, temperature: float = 0.5, hidden: int = 2048,
                 out: int = 128) -> None:
        super().__init__()
        self.encoder, self.temperature = encoder, temperature
        self.projector = simclr_projector(dim, hidden, out)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, small: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        # Under torchrun every rank's loss sees the global views of every rank.
        z = [all_gather_with_grad(self.projector(f)) for f in encode_views(self.encoder, v1, v2, small)]
        pairs = [(i, j) for i, j in view_pairs(len(z)) if (i, j) != (1, 0)]  # NT-Xent is symmetric already
        return sum(nt_xent(z[i], z[j], self.temperature) for i, j in pairs) / len(pairs)


class BYOL(nn.Module):
    """Args: encoder, feature width d, head sizes, tau_base (0.996)."""

    def __init__(self, encoder: nn.Module, dim: int, hidden: int = 4096, out: int = 256,
                 tau_base: float = 0.996) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = byol_mlp(dim, hidden, out)
        self.predictor = byol_mlp(out, hidden, out)
        self.target_encoder = copy.deepcopy(encoder)
        self.target_projector = copy.deepcopy(self.projector)
        for p in self.target_parameters():
            p.requires_grad_(False)
        self.tau_base = tau_base

    def target_parameters(self):
        yield from self.target_encoder.parameters()
        yield from self.target_projector.parameters()

    def momentum(self, step: int, total: int) -> float:
        return 1 - (1 - self.tau_base) * (math.cos(math.pi * step / max(1, total)) + 1) / 2

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        online = list(self.encoder.parameters()) + list(self.projector.parameters())
        for t, o in zip(self.target_parameters(), online):
            t.mul_(tau).add_(o.detach(), alpha=1 - tau)
        online_b = list(self.encoder.buffers()) + list(self.projector.buffers())
        target_b = list(self.target_encoder.buffers()) + list(self.target_projector.buffers())
        for t, o in zip(target_b, online_b):
            t.copy_(o)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, small: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        p = [self.predictor(self.projector(f)) for f in encode_views(self.encoder, v1, v2, small)]
        with torch.no_grad():
            t = [self.target_projector(self.target_encoder(v)) for v in (v1, v2)]
        pairs = view_pairs(len(p))  # (target i, online j): the paper's sum of two terms without small views
        loss = sum((2 - 2 * F.cosine_similarity(p[j], t[i], dim=-1)).mean() for i, j in pairs)
        return loss * 2 / len(pairs)


class SimSiam(nn.Module):
    """Args: encoder, feature width d, projector width (2048), predictor bottleneck (512)."""

    def __init__(self, encoder: nn.Module, dim: int, proj_dim: int = 2048, bottleneck: int = 512) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = simsiam_projector(dim, proj_dim)
        self.predictor = simsiam_predictor(proj_dim, bottleneck)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, small: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        z = [self.projector(f) for f in encode_views(self.encoder, v1, v2, small)]
        p = [self.predictor(x) for x in z]
        d = lambda p, z: -F.cosine_similarity(p, z.detach(), dim=-1).mean()  # noqa: E731 - stop-gradient on z
        pairs = view_pairs(len(z))
        return sum(d(p[j], z[i]) for i, j in pairs) / len(pairs)


def view_pairs(n_views: int) -> list[tuple[int, int]]:
    """(i, j) for each global view i (0, 1) and every other view j: (0, 1), (1, 0), then the small views."""
    return [(i, j) for i in (0, 1) for j in range(n_views) if j != i]


def encode_views(encoder: nn.Module, v1: torch.Tensor, v2: torch.Tensor,
                 small: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Features of the two global views, then of each small view (the small ones in one pass)."""
    out = [encoder(v1), encoder(v2)]
    if small:
        out += list(encoder(torch.cat(list(small))).chunk(len(small)))
    return out
