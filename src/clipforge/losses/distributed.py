"""Distributed forms of the CLIP and SigLIP losses, for models wrapped in DDP (which averages
gradients over ranks).

* ``mode="gather"``: features are all-gathered *with gradients* (the backward all-reduces and
  keeps this rank's slice) and every rank computes the loss of the global batch.
* ``mode="local"``: each rank computes only its own rows (its images against all texts, its texts
  against all images), scaled by the world size so that DDP's average is the global loss's
  gradient; it does 1/world_size of the logits work.

After DDP averages them, both give exactly the gradients of one process holding the global batch,
the temperature's included. (Gathering *without* gradients, open_clip's default, gives
1/world_size of them.) Every rank must hold the same number of samples.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from clipforge.losses.clip import clip_loss
from clipforge.losses.siglip import siglip_loss


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.n = rank, x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` concatenated in rank order; gradients flow back to every rank's slice."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _AllGatherWithGrad.apply(x)


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def distributed_clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                          mode: str = "gather", tiled: bool = False) -> torch.Tensor:
    """The symmetric CLIP loss of the global batch under DDP (see the module docstring)."""
    all_img = all_gather_with_grad(image_features)
    all_txt = all_gather_with_grad(text_features)
    if mode == "gather":
        if tiled:
            from clipforge.losses.tiled import tiled_clip_loss

            return tiled_clip_loss(all_img, all_txt, logit_scale)
        return clip_loss(all_img, all_txt, logit_scale)
    if mode != "local":
        raise ValueError(f"mode must be 'gather' or 'local', got {mode!r}")
    rank, _ = _rank_world()
    n = image_features.shape[0]
    targets = torch.arange(rank * n, (rank + 1) * n, device=image_features.device)
    rows = F.cross_entropy(logit_scale * image_features @ all_txt.T, targets)
    cols = F.cross_entropy(logit_scale * text_features @ all_img.T, targets)
    return (rows + cols) / 2


def distributed_siglip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                            logit_bias: torch.Tensor, mode: str = "gather") -> torch.Tensor:
    """SigLIP's loss of the global batch under DDP: ``gather`` or ``local`` (this rank's image rows)."""
    all_txt = all_gather_with_grad(text_features)
    if mode == "gather":
        return siglip_loss(all_gather_with_grad(image_features), all_txt, logit_scale, logit_bias)
    if mode != "local":
        raise ValueError(f"mode must be 'gather' or 'local', got {mode!r}")
    rank, _ = _rank_world()
    n = image_features.shape[0]
    logits = logit_scale * image_features @ all_txt.T + logit_bias
    labels = -torch.ones_like(logits)
    labels[torch.arange(n), torch.arange(rank * n, (rank + 1) * n)] = 1
    return -F.logsigmoid(labels * logits).sum() / n
