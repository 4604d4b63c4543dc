"""SimCLR, BYOL and SimSiam as modules: ``loss = method(view1, view2)``; the encoder is ``method.encoder``.

* SimCLR (Chen et al. 2020): NT-Xent over the 2N projected views (clipforge.losses.nt_xent).
* BYOL (Grill et al. 2020): an online network (encoder, projector, predictor) predicts a target
  network's projection of the other view; the target is an exponential moving average of the
  online encoder and projector, with tau_k = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2 and
  tau_base = 0.996; loss 2 - 2 cos, symmetrised. The target gets no gradient.
* SimSiam (Chen & He 2021): D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2 with D the negative
  cosine similarity.
"""

from __future__ import annotations

import copy
import math

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

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        z1, z2 = self.projector(self.encoder(v1)), self.projector(self.encoder(v2))
        # Under torchrun every rank's loss sees the global 2N views.
        return nt_xent(all_gather_with_grad(z1), all_gather_with_grad(z2), self.temperature)


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

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        p1 = self.predictor(self.projector(self.encoder(v1)))
        p2 = self.predictor(self.projector(self.encoder(v2)))
        with torch.no_grad():
            t1 = self.target_projector(self.target_encoder(v1))
            t2 = self.target_projector(self.target_encoder(v2))
        loss = (2 - 2 * F.cosine_similarity(p1, t2, dim=-1)) + (2 - 2 * F.cosine_similarity(p2, t1, dim=-1))
        return loss.mean()


class SimSiam(nn.Module):
    """Args: encoder, feature width d, projector width (2048), predictor bottleneck (512)."""

    def __init__(self, encoder: nn.Module, dim: int, proj_dim: int = 2048, bottleneck: int = 512) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = simsiam_projector(dim, proj_dim)
        self.predictor = simsiam_predictor(proj_dim, bottleneck)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        z1, z2 = self.projector(self.encoder(v1)), self.projector(self.encoder(v2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        d = lambda p, z: -F.cosine_similarity(p, z.detach(), dim=-1).mean()  # noqa: E731 - stop-gradient on z
        return d(p1, z2) / 2 + d(p2, z1) / 2
