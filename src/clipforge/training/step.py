"""One contrastive optimisation step's forward and backward, exact at any micro-batch size.

With micro-batches (GradCache, Gao et al. 2021): (1) compute every micro-batch's features without
a graph; (2) compute the loss of the whole batch from them and its gradient with respect to the
features and the temperature; (3) re-run each micro-batch with a graph and back-propagate the
cached feature gradients. The result equals the full batch's gradients for every parameter,
the temperature included (which gets its gradient once, in step 2). open_clip's accumulation
instead sums K micro-batch losses' temperature gradients, K times the true one.

Models must be deterministic between the two forward passes (no dropout; BatchNorm statistics in
train mode depend on the micro-batch, as in any accumulation scheme).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

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
    with torch.no_grad(), _autocast(precision):
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
    return loss.detach()
