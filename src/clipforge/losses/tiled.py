"""Exact contrastive losses in O(N d) memory: the N x N similarity matrix is never held.

:func:`tiled_clip_loss` computes the symmetric CLIP loss (or one-direction InfoNCE) tile by tile.
The forward pass keeps only the row and column log-sum-exps; the backward pass recomputes each
tile and accumulates

    dL/dx_i = s/(2N) * (sum_j (P_r + P_c)_ij y_j - 2 y_i),  P_r = softmax over rows, P_c over columns,
    dL/ds   = 1/(2N) * (sum_ij (P_r + P_c)_ij x_i.y_j - 2 sum_i x_i.y_i),

so values and gradients (the temperature's included) equal the naive loss's. :func:`tiled_siglip_loss`
does the same for SigLIP, whose tiles are independent sums.

The tile side defaults to about sqrt(N d / 4), which keeps a tile's temporaries below the size
of the embeddings themselves.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from clipforge.losses.reductions import zero_like_graph


def default_tile(n: int, d: int) -> int:
    return max(64, min(n, int(math.sqrt(n * d / 4))))


def _full_precision(*ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Half-precision features are upcast: a softmax over thousands of logits needs fp32."""
    return tuple(t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in ts)


def _rowwise_dot(x: torch.Tensor, y: torch.Tensor, tile: int) -> torch.Tensor:
    """sum(x * y, dim=1) without an N x D temporary."""
    return torch.cat([(x[i0:i1] * y[i0:i1]).sum(dim=1) for i0, i1 in _blocks(x.shape[0], tile)])


def _blocks(n: int, tile: int) -> list[tuple[int, int]]:
    return [(i, min(i + tile, n)) for i in range(0, n, tile)]


class _TiledCLIP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, tile: int, symmetric: bool):
        n = x.shape[0]
        blocks = _blocks(n, tile)
        lse_r = torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device)
        lse_c = torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device)
        for i0, i1 in blocks:
            for j0, j1 in blocks:
                logits = scale * (x[i0:i1] @ y[j0:j1].T)
                lse_r[i0:i1] = torch.logaddexp(lse_r[i0:i1], torch.logsumexp(logits, dim=1))
                if symmetric:
                    lse_c[j0:j1] = torch.logaddexp(lse_c[j0:j1], torch.logsumexp(logits, dim=0))
        diag = _rowwise_dot(x, y, tile)
        if symmetric:
            loss = (lse_r.sum() + lse_c.sum() - 2 * scale * diag.sum()) / (2 * n)
        else:
            loss = (lse_r.sum() - scale * diag.sum()) / n
        ctx.save_for_backward(x, y, scale, lse_r, lse_c, diag)
        ctx.tile, ctx.symmetric = tile, symmetric
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, y, scale, lse_r, lse_c, diag = ctx.saved_tensors
        n = x.shape[0]
        gx, gy = torch.zeros_like(x), torch.zeros_like(y)
        gs = torch.zeros((), dtype=x.dtype, device=x.device)
        for i0, i1 in _blocks(n, ctx.tile):
            for j0, j1 in _blocks(n, ctx.tile):
                # Three tile-sized buffers at most, updated in place.
                sims = x[i0:i1] @ y[j0:j1].T
                p = torch.mul(sims, scale)
                if ctx.symmetric:
                    q = (p - lse_c[None, j0:j1]).exp_()
                    p.sub_(lse_r[i0:i1, None]).exp_().add_(q)
                    del q
                else:
                    p.sub_(lse_r[i0:i1, None]).exp_()
                gx[i0:i1].addmm_(p, y[j0:j1])
                gy[j0:j1].addmm_(p.T, x[i0:i1])
                gs += p.mul_(sims).sum()
        k = 2.0 if ctx.symmetric else 1.0
        norm = grad / (k * n)
        gx.sub_(y, alpha=k).mul_(scale * norm)
        gy.sub_(x, alpha=k).mul_(scale * norm)
        gs = (gs - k * diag.sum()) * norm
        return gx, gy, gs.reshape(scale.shape), None, None


def tiled_clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                    tile: int | None = None, symmetric: bool = True) -> torch.Tensor:
    """The symmetric CLIP loss (``symmetric=False``: image->text InfoNCE), exact, O(N d) memory.

    Args: normalised features [N, D]; ``logit_scale`` already exponentiated (1 / temperature).
    """
    n, d = image_features.shape
    if n == 0:
        return zero_like_graph(image_features, text_features, torch.as_tensor(logit_scale))
    image_features, text_features = _full_precision(image_features, text_features)
    scale = torch.as_tensor(logit_scale, dtype=image_features.dtype, device=image_features.device)
    with torch.autocast(image_features.device.type, enabled=False):
        return _TiledCLIP.apply(image_features, text_features, scale, tile or default_tile(n, d), symmetric)


class _TiledSigLIP(torch.autograd.Function):
    # Each tile costs one matmul into one buffer (addmm folds scale and bias in) and one elementwise
    # kernel; the temperature's gradient sum_ij g_ij x_i.y_j is read off g @ y, which the input
    # gradient needs anyway, so no second tile-sized buffer is made.
    @staticmethod
    def forward(ctx, x, y, scale, bias, tile: int):
        n = x.shape[0]
        s, b = float(scale), bias.reshape(())
        total = torch.zeros((), dtype=x.dtype, device=x.device)
        for i0, i1 in _blocks(n, tile):
            for j0, j1 in _blocks(n, tile):
                z = torch.addmm(b, x[i0:i1], y[j0:j1].T, alpha=s)
                total += F.softplus(z).sum()  # every pair as a negative: -log sigma(-z) ...
        zd = scale * _rowwise_dot(x, y, tile) + bias
        total += F.logsigmoid(-zd).sum() - F.logsigmoid(zd).sum()  # ... then fix the diagonal
        ctx.save_for_backward(x, y, scale, bias)
        ctx.tile = tile
        return total / n

    @staticmethod
    def backward(ctx, grad):
        x, y, scale, bias = ctx.saved_tensors
        n = x.shape[0]
        s, b = float(scale), bias.reshape(())
        gx, gy = torch.zeros_like(x), torch.zeros_like(y)
        gs = torch.zeros((), dtype=x.dtype, device=x.device)
        gb = torch.zeros((), dtype=x.dtype, device=x.device)
        for i0, i1 in _blocks(n, ctx.tile):
            for j0, j1 in _blocks(n, ctx.tile):
                g = torch.addmm(b, x[i0:i1], y[j0:j1].T, alpha=s).sigmoid_()  # d/dz of -log sigma(-z)
                if i0 == j0:  # diagonal pairs are positives: d/dz of -log sigma(z) = sigma(z) - 1
                    g.diagonal().sub_(1)
                gy_rows = g @ y[j0:j1]
                gx[i0:i1] += gy_rows
                gs += (gy_rows * x[i0:i1]).sum()
                gy[j0:j1].addmm_(g.T, x[i0:i1])
                gb += g.sum()
        norm = grad / n
        gx.mul_(scale * norm)
        gy.mul_(scale * norm)
        return gx, gy, (gs * norm).reshape(scale.shape), (gb * norm).reshape(bias.shape), None


def tiled_siglip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                      logit_bias: torch.Tensor, tile: int | None = None) -> torch.Tensor:
    """SigLIP's sigmoid loss, exact, O(N d) memory (``logit_scale`` already exponentiated)."""
    n, d = image_features.shape
    if n == 0:
        return zero_like_graph(image_features, text_features, torch.as_tensor(logit_scale),
                               torch.as_tensor(logit_bias))
    t = tile or default_tile(n, d)
    image_features, text_features = _full_precision(image_features, text_features)
    scale = torch.as_tensor(logit_scale, dtype=image_features.dtype, device=image_features.device)
    bias = torch.as_tensor(logit_bias, dtype=image_features.dtype, device=image_features.device)
    with torch.autocast(image_features.device.type, enabled=False):
        return _TiledSigLIP.apply(image_features, text_features, scale, bias, t)
