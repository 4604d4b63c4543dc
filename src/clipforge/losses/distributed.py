"""Distributed forms of the CLIP and SigLIP losses, for models wrapped in DDP (which averages
gradients over ranks).

* ``mode="gather"``: features are all-gathered *with gradients* (the backward all-reduces and
  keeps this rank's slice) and every rank computes the loss of the global batch.
* ``mode="local"``: each rank computes only its own rows (its images against all texts, its texts
  against all images), scaled by the world size so that DDP's average is the global loss's
  gradient; it does 1/world_size of the logits work.

After DDP averages them, both give exactly the gradients of one process holding the global batch,
the temperature's included. (Gathering *without* gradients, open_clip's default, gives
1/world_size of them.) Ranks may hold different numbers of samples (their sizes are gathered
first and the rows padded for the collective), as a last partial batch does.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from clipforge.losses.clip import clip_loss
from clipforge.losses.reductions import zero_like_graph
from clipforge.losses.siglip import siglip_loss


def all_gather_rows(x: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """Every rank's ``x`` (rows ``sizes[r]`` on rank r), without gradients, in rank order.

    gloo and NCCL gather equal shapes only: every rank's rows are padded to the largest, then cut.
    """
    padded = x.new_zeros((max(sizes), *x.shape[1:]))
    padded[: x.shape[0]] = x.detach()
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return [part[:n] for part, n in zip(parts, sizes)]


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        ctx.start, ctx.n = sum(sizes[: dist.get_rank()]), x.shape[0]
        return torch.cat(all_gather_rows(x, sizes))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.start + ctx.n], None


def rank_sizes(n: int, device: torch.device | None = None) -> list[int]:
    """Every rank's number of rows (ranks may hold different numbers, e.g. a last partial batch)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [n]
    mine = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, mine)
    return [int(s) for s in sizes]


def all_gather_with_grad(x: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """All ranks' ``x`` concatenated in rank order; gradients flow back to every rank's slice.

    Ranks may hold different numbers of rows (``sizes``, gathered first when not given).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _AllGatherWithGrad.apply(x, sizes or rank_sizes(x.shape[0], x.device))


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def distributed_clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                          mode: str = "gather", tiled: bool = False) -> torch.Tensor:
    """The symmetric CLIP loss of the global batch under DDP (see the module docstring)."""
    if mode not in ("gather", "local"):
        raise ValueError(f"mode must be 'gather' or 'local', got {mode!r}")
    sizes = rank_sizes(image_features.shape[0], image_features.device)
    all_img = all_gather_with_grad(image_features, sizes)
    all_txt = all_gather_with_grad(text_features, sizes)
    if mode == "gather":
        if tiled:
            from clipforge.losses.tiled import tiled_clip_loss

            return tiled_clip_loss(all_img, all_txt, logit_scale)
        return clip_loss(all_img, all_txt, logit_scale)
    rank, world = _rank_world()
    n, start, total = image_features.shape[0], sum(sizes[:rank]), sum(sizes)
    if n == 0:
        return zero_like_graph(image_features, text_features, logit_scale, all_img, all_txt)
    targets = torch.arange(start, start + n, device=image_features.device)
    rows = F.cross_entropy(logit_scale * image_features @ all_txt.T, targets, reduction="sum")
    cols = F.cross_entropy(logit_scale * text_features @ all_img.T, targets, reduction="sum")
    # DDP averages over ranks: world / total makes that average the global mean's gradient.
    return (rows + cols) / 2 * (world / total)


def distributed_siglip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                            logit_bias: torch.Tensor, mode: str = "gather") -> torch.Tensor:
    """SigLIP's loss of the global batch under DDP: ``gather`` or ``local`` (this rank's image rows)."""
    if mode not in ("gather", "local"):
        raise ValueError(f"mode must be 'gather' or 'local', got {mode!r}")
    sizes = rank_sizes(image_features.shape[0], image_features.device)
    all_txt = all_gather_with_grad(text_features, sizes)
    if mode == "gather":
        return siglip_loss(all_gather_with_grad(image_features, sizes), all_txt, logit_scale, logit_bias)
    rank, world = _rank_world()
    n, start, total = image_features.shape[0], sum(sizes[:rank]), sum(sizes)
    logits = logit_scale * image_features @ all_txt.T + logit_bias
    labels = -torch.ones_like(logits)
    labels[torch.arange(n), torch.arange(start, start + n)] = 1
    return -F.logsigmoid(labels * logits).sum() * (world / total)
