"""The tiled (O(N d) memory) CLIP/InfoNCE and SigLIP losses equal the naive ones, gradients included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clipforge.losses import clip_loss, info_nce, siglip_loss
from clipforge.losses.tiled import tiled_clip_loss, tiled_siglip_loss


def _inputs(n: int, d: int, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1).requires_grad_()
    y = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1).requires_grad_()
    log_scale = torch.tensor(2.5, dtype=dtype, requires_grad=True)
    return x, y, log_scale


def _grads(loss, *leaves):
    return torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize(("n", "tile"), [(13, 4), (32, 32), (50, 16)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_tiled_clip_equals_naive_float64(n, tile, symmetric) -> None:
    x, y, ls = _inputs(n, 8)
    naive = clip_loss(x, y, ls.exp()) if symmetric else F.cross_entropy(ls.exp() * x @ y.T, torch.arange(n))
    tiled = tiled_clip_loss(x, y, ls.exp(), tile=tile, symmetric=symmetric)
    torch.testing.assert_close(tiled, naive, rtol=1e-6, atol=0)
    for a, b in zip(_grads(tiled, x, y, ls), _grads(naive, x, y, ls)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)


def test_tiled_clip_equals_naive_float32() -> None:
    x, y, ls = _inputs(300, 64, torch.float32)
    naive = clip_loss(x, y, ls.exp())
    tiled = tiled_clip_loss(x, y, ls.exp(), tile=128)
    torch.testing.assert_close(tiled, naive, rtol=1e-4, atol=0)
    for a, b in zip(_grads(tiled, x, y, ls), _grads(naive, x, y, ls)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_tiled_infonce_matches_info_nce_function() -> None:
    x, y, ls = _inputs(20, 8)
    t = 0.5
    torch.testing.assert_close(tiled_clip_loss(x, y, torch.tensor(1 / t, dtype=torch.float64), tile=6,
                                               symmetric=False), info_nce(x, y, temperature=t))


def test_tiled_clip_gradcheck() -> None:
    x, y, ls = _inputs(7, 5)
    assert torch.autograd.gradcheck(lambda a, b, s: tiled_clip_loss(a, b, s.exp(), tile=3), (x, y, ls))
    assert torch.autograd.gradcheck(lambda a, b, s: tiled_clip_loss(a, b, s.exp(), tile=3, symmetric=False),
                                    (x, y, ls))


@pytest.mark.parametrize(("n", "tile"), [(13, 4), (24, 24)])
def test_tiled_siglip_equals_naive(n, tile) -> None:
    x, y, ls = _inputs(n, 8)
    bias = torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)
    naive = siglip_loss(x, y, ls.exp(), bias)
    tiled = tiled_siglip_loss(x, y, ls.exp(), bias, tile=tile)
    torch.testing.assert_close(tiled, naive, rtol=1e-6, atol=0)
    for a, b in zip(_grads(tiled, x, y, ls, bias), _grads(naive, x, y, ls, bias)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)


def test_tiled_siglip_gradcheck() -> None:
    x, y, ls = _inputs(7, 5)
    bias = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, s, c: tiled_siglip_loss(a, b, s.exp(), c, tile=3), (x, y, ls, bias))


def test_tiled_under_bf16_autocast() -> None:
    x, y, ls = _inputs(64, 16, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tiled = tiled_clip_loss(x, y, ls.exp(), tile=16)
    assert tiled.dtype == torch.float32 and torch.isfinite(tiled)
    torch.testing.assert_close(tiled, clip_loss(x, y, ls.exp()), rtol=1e-4, atol=0)
