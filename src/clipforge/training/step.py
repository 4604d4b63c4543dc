"""One contrastive optimisation step's forward and backward, exact at any micro-batch size.

With micro-batches (GradCache, Gao et al. 2021): (1) compute every micro-batch's features without
a graph; (2) compute the loss of the whole batch from them and its gradient with respect to the
features and the temperature; (3) re-run each micro-batch with a graph and back-propagate the
cached feature gradients. The result equals the full batch's gradients for every parameter,
the temperature included (which gets its gradient once, in step 2). open_clip's accumulation
instead sums K micro-batch losses' temperature gradients, K times the true one.

Models must be deterministic between the two forward passes (no dropout). BatchNorm is the one
exception to exactness: in train mode it normalises each micro-batch by that micro-batch's
statistics, so a BatchNorm tower (the ResNets) gets the gradients of a model that normalises per
micro-batch, not per batch. Its running statistics are still updated once per step (from the
micro-batches' statistics, :class:`BatchNormOncePerStep`), never by the first pass; the trainer warns
when a BatchNorm model is micro-batched (:func:`micro_batching_is_inexact`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from clipforge.models.clip import CLIP
from clipforge.training.distributed import DistInfo, gather_features

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _autocast(precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        return torch.autocast(device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _scale(model: CLIP) -> torch.Tensor:
    return model.logit_scale.clamp(max=model.max_log_scale).exp()


def _batchnorms(model: torch.nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]


def micro_batching_is_inexact(model: torch.nn.Module) -> bool:
    """True when the model has BatchNorm layers in train mode (their statistics follow the micro-batch)."""
    return bool(_batchnorms(model))


class BatchNormOncePerStep:
    """One running-statistics update per optimiser step, however many forward passes it takes.

    ``with stats.collect():`` around the no-grad first pass records each BatchNorm's micro-batch
    statistics (momentum 1 makes the running buffers hold them); :meth:`commit` after the second
    pass (and any gradient-checkpointing recomputation) restores the buffers and applies a single
    update with the mean of the recorded statistics, as a full batch would: new = (1 - m) old + m stat.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.layers = _batchnorms(model)
        self.saved = [(bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
                      for bn in self.layers]
        self.sums = [[torch.zeros_like(bn.running_mean), torch.zeros_like(bn.running_var), 0] for bn in self.layers]

    @contextlib.contextmanager
    def collect(self):
        momenta = [bn.momentum for bn in self.layers]
        hooks = [bn.register_forward_hook(self._record(i)) for i, bn in enumerate(self.layers)]
        for bn in self.layers:
            bn.momentum = 1.0
        try:
            yield
        finally:
            for bn, m, h in zip(self.layers, momenta, hooks):
                bn.momentum = m
                h.remove()

    def _record(self, i: int):
        def hook(bn: _BatchNorm, _inputs, _output) -> None:
            acc = self.sums[i]
            acc[0] += bn.running_mean
            acc[1] += bn.running_var
            acc[2] += 1
        return hook

    @torch.no_grad()
    def commit(self) -> None:
        for bn, (mean, var, count), (sum_mean, sum_var, n) in zip(self.layers, self.saved, self.sums):
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.num_batches_tracked.copy_(count)
            if not n:
                continue
            bn.num_batches_tracked += 1
            m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.mul_(1 - m).add_(sum_mean / n, alpha=m)
            bn.running_var.mul_(1 - m).add_(sum_var / n, alpha=m)


def contrastive_backward(
    model: CLIP,
    images: torch.Tensor,
    tokens: torch.Tensor,
    loss_fn: LossFn,
    micro_batch_size: int | None = None,
    precision: str = "fp32",
    dist_info: DistInfo | None = None,
) -> torch.Tensor:
    """Forward + backward of the contrastive loss of the (global) batch; returns the loss.

    Gradients are accumulated into ``.grad``; under torchrun each rank holds its share, to be
    summed with :func:`~clipforge.training.distributed.reduce_gradients`.
    """
    info = dist_info or DistInfo()
    n = images.shape[0]
    if not micro_batch_size or micro_batch_size >= n:
        with _autocast(precision):
            img = model.encode_image(images, normalize=True)
            txt = model.encode_text(tokens, normalize=True)
        img_all, _ = gather_features(img.float(), info)
        txt_all, _ = gather_features(txt.float(), info)
        loss = loss_fn(img_all, txt_all, _scale(model))
        loss.backward()
        return loss.detach()

    chunks = list(zip(images.split(micro_batch_size), tokens.split(micro_batch_size)))
    batchnorm = BatchNormOncePerStep(model)
    with torch.no_grad(), _autocast(precision), batchnorm.collect():
        img = torch.cat([model.encode_image(i, normalize=True).float() for i, _ in chunks])
        txt = torch.cat([model.encode_text(t, normalize=True).float() for _, t in chunks])
    img = img.requires_grad_()
    txt = txt.requires_grad_()
    img_all, offset = gather_features(img, info)
    txt_all, _ = gather_features(txt, info)
    loss = loss_fn(img_all, txt_all, _scale(model))
    loss.backward()  # feature gradients + the temperature's, once
    g_img, g_txt = img.grad, txt.grad
    start = 0
    for i, t in chunks:
        end = start + i.shape[0]
        with _autocast(precision):
            fi = model.encode_image(i, normalize=True).float()
            ft = model.encode_text(t, normalize=True).float()
        torch.autograd.backward([fi, ft], [g_img[start:end], g_txt[start:end]])
        start = end
    batchnorm.commit()
    return loss.detach()
