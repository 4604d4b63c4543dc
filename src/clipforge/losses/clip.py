"""The symmetric contrastive loss of CLIP (Radford et al. 2021, figure 3).

For L2-normalised image features I and text features T of N matched pairs and a scale
s = exp(logit_scale) = 1 / temperature, the logits are s * I T^T and

    L = ( CE(s I T^T, diag) + CE(s T I^T, diag) ) / 2,

the mean of the image->text and text->image cross-entropies with the matching pair as the target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.losses.reductions import zero_like_graph


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a batch of matched pairs.

    Args:
        image_features: [N, D], normalised.
        text_features: [N, D], normalised.
        logit_scale: the exponentiated scale (1 / temperature), a scalar tensor.
    """
    if image_features.shape[0] == 0:
        return zero_like_graph(image_features, text_features, logit_scale)
    logits = logit_scale * image_features @ text_features.T
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # the softmax in half precision loses too much
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


class CLIPLoss(nn.Module):
    """Module form of :func:`clip_loss`; ``forward(image_features, text_features, logit_scale)``."""

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor) -> torch.Tensor:
        return clip_loss(image_features, text_features, logit_scale)
