"""DRAW's selective attention: a grid of N x N Gaussian filters read from, or written to, an image
(Gregor et al. 2015, section 3.2), as alignDRAW uses it (Mansimov et al. 2016, section 3.2).

Five numbers from a hidden state place the grid: the centre (g_x, g_y), the stride delta between
filters, the filters' variance sigma^2 and an intensity gamma. With A x B the image (width x
height) and pixel coordinates from 0::

    g_x = (A - 1) / 2 * (g~_x + 1)          g_y = (B - 1) / 2 * (g~_y + 1)
    delta = (max(A, B) - 1) / (N - 1) * exp(log delta~)
    mu_x^i = g_x + (i - (N - 1) / 2) * delta,   i = 0 .. N-1                       (eq. 19-22)
    F_x[i, a] = exp(-(a - mu_x^i)^2 / (2 sigma^2)) / Z_x   (each filter sums to 1)  (eq. 25-26)

    read(x)  = gamma * F_y x F_x^T          (an N x N glimpse)                     (eq. 27)
    write(w) = 1 / gamma * F_y^T w F_x      (an N x N patch spread over the image)  (eq. 29)

The paper counts pixels from 1 and writes (A + 1) / 2 and i - N/2 - 0.5; counting from 0 gives
the same grid. With N equal to the image side, a stride of 1 and a tiny variance, F is the
identity and write(read(x)) = x, which the tests check.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Window:
    """A filter grid: centres [B], stride [B], variance [B], intensity [B]."""

    gx: torch.Tensor
    gy: torch.Tensor
    delta: torch.Tensor
    var: torch.Tensor
    gamma: torch.Tensor


def filters(centre: torch.Tensor, delta: torch.Tensor, var: torch.Tensor, n: int, size: int,
            eps: float = 1e-8) -> torch.Tensor:
    """F [B, n, size]: ``n`` Gaussian filters along one axis of ``size`` pixels, each summing to 1."""
    i = torch.arange(n, dtype=centre.dtype, device=centre.device)
    mu = centre[:, None] + (i - (n - 1) / 2) * delta[:, None]  # [B, n]
    a = torch.arange(size, dtype=centre.dtype, device=centre.device)
    f = torch.exp(-(a[None, None] - mu[..., None]) ** 2 / (2 * var[:, None, None]))
    return f / (f.sum(-1, keepdim=True) + eps)


def window(params: torch.Tensor, n: int, width: int, height: int) -> Window:
    """The grid from the five raw numbers [B, 5] (g~_x, g~_y, log sigma^2, log delta~, log gamma)."""
    gx_, gy_, log_var, log_delta, log_gamma = params.unbind(-1)
    return Window(gx=(width - 1) / 2 * (gx_ + 1), gy=(height - 1) / 2 * (gy_ + 1),
                  delta=(max(width, height) - 1) / max(n - 1, 1) * log_delta.exp(), var=log_var.exp(),
                  gamma=log_gamma.exp())


def read(x: torch.Tensor, w: Window, n: int) -> torch.Tensor:
    """gamma F_y x F_x^T: an [B, C, n, n] glimpse of images [B, C, H, W]."""
    fx = filters(w.gx, w.delta, w.var, n, x.shape[-1])
    fy = filters(w.gy, w.delta, w.var, n, x.shape[-2])
    return w.gamma[:, None, None, None] * (fy[:, None] @ x @ fx[:, None].transpose(-1, -2))


def write(patch: torch.Tensor, w: Window, height: int, width: int) -> torch.Tensor:
    """1/gamma F_y^T w F_x: patches [B, C, n, n] spread over [B, C, height, width]."""
    n = patch.shape[-1]
    fx = filters(w.gx, w.delta, w.var, n, width)
    fy = filters(w.gy, w.delta, w.var, n, height)
    return (fy[:, None].transpose(-1, -2) @ patch @ fx[:, None]) / w.gamma[:, None, None, None]


class Attention(nn.Module):
    """The linear map from a hidden state to a grid's five numbers (DRAW eq. 21)."""

    def __init__(self, hidden: int, n: int) -> None:
        super().__init__()
        self.n = n
        self.params = nn.Linear(hidden, 5)

    def forward(self, h: torch.Tensor, width: int, height: int) -> Window:
        return window(self.params(h), self.n, width, height)
