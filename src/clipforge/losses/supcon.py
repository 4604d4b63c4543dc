"""Supervised contrastive loss (Khosla et al. 2020, equations 2 and 3).

For anchor i with positives P(i) (same label, not i) and A(i) all samples but i:

* L_out (eq. 2, the better one in the paper): -1/|P(i)| sum_{p in P(i)} log( exp(s_ip/t) / sum_{a in A(i)} exp(s_ia/t) )
* L_in  (eq. 3): -log( 1/|P(i)| sum_{p in P(i)} exp(s_ip/t) / sum_{a in A(i)} exp(s_ia/t) )

with s the cosine similarity. Anchors without positives are left out; the loss is the mean over
anchors that have a non-zero term (pytorch-metric-learning's reduction for SupConLoss). A batch
without a negative pair (every sample one label) gives 0, as in pytorch-metric-learning: the
formula's value there (>= log(N - 1)) carries no contrastive signal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.losses.reductions import reduce, zero_like_graph


def supcon(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1, form: str = "out",
           reduction: str = "mean_nonzero") -> torch.Tensor:
    if form not in ("out", "in"):
        raise ValueError(f"form must be 'out' or 'in', got {form!r}")
    z = F.normalize(embeddings, dim=-1)
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = (z @ z.T) / temperature
    log_prob = sim - torch.logsumexp(sim.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
    same = labels[:, None] == labels[None, :]
    pos = same & ~eye
    if not (~same).any():
        return zero_like_graph(embeddings)
    n_pos = pos.sum(dim=1)
    has = n_pos > 0
    if form == "out":
        per_anchor = -(log_prob * pos).sum(dim=1)[has] / n_pos[has]
    else:
        masked = log_prob.masked_fill(~pos, float("-inf"))[has]
        per_anchor = -(torch.logsumexp(masked, dim=1) - torch.log(n_pos[has].to(z.dtype)))
    return reduce(per_anchor, reduction, embeddings)


class SupConLoss(nn.Module):
    """Args: temperature; form ``"out"`` (L_out, default) or ``"in"`` (L_in)."""

    def __init__(self, temperature: float = 0.1, form: str = "out") -> None:
        super().__init__()
        self.temperature, self.form = temperature, form

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return supcon(embeddings, labels, self.temperature, self.form)
