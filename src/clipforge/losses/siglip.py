"""The sigmoid loss of SigLIP (Zhai et al. 2023, algorithm 1).

Every image-text pair is an independent binary classification: with logits
z_ij = t * x_i . y_j + b (t = exp(t'), learnable, init t' = log 10; b learnable, init -10) and
labels l_ij = 1 if i == j else -1, L = -1/N sum_i sum_j log sigma(l_ij z_ij).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.losses.reductions import zero_like_graph


def siglip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor) -> torch.Tensor:
    """Args: normalised features [N, D] each; logit_scale = exp(t') (already exponentiated); bias b."""
    if image_features.shape[0] == 0:
        return zero_like_graph(image_features, text_features, logit_scale, logit_bias)
    logits = logit_scale * image_features @ text_features.T + logit_bias
    n = logits.shape[0]
    labels = 2 * torch.eye(n, dtype=logits.dtype, device=logits.device) - 1
    return -F.logsigmoid(labels * logits).sum() / n


class SigLIPLoss(nn.Module):
    """Holds the learnable log-scale (init log 10) and bias (init -10)."""

    def __init__(self, init_log_scale: float = math.log(10.0), init_bias: float = -10.0) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(init_log_scale))
        self.bias = nn.Parameter(torch.tensor(init_bias))

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return siglip_loss(image_features, text_features, self.log_scale.exp(), self.bias)
