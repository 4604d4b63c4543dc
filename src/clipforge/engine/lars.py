"""LARS: layer-wise adaptive rate scaling (You et al. 2017), as SimCLR trains with it (Chen et al. 2020,
sec. B.1; google-research/simclr's ``lars_optimizer.py``).

For a parameter w with gradient g, weight decay lambda, momentum m and learning rate eta_t::

    g     <- g + lambda w
    ratio  = trust * ||w|| / ||g||      (1 when either norm is 0)
    v     <- m v + eta_t ratio g
    w     <- w - v

A group with ``lars=False`` (SimCLR leaves biases and batch-norm parameters out) skips both the
decay and the ratio: plain SGD with momentum. Use with :func:`lars_groups`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from clipforge.engine.schedule import no_decay


class LARS(torch.optim.Optimizer):
    """Args: params (groups may set ``lars`` and ``weight_decay``), lr, momentum (0.9), weight_decay
    (1e-6, the SimCLR paper's), trust (the trust coefficient, 1e-3 as in SimCLR's code)."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 1e-6,
                 trust: float = 1e-3) -> None:
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0 or trust <= 0:
            raise ValueError(f"LARS: lr > 0, 0 <= momentum < 1, weight_decay >= 0 and trust > 0 expected, got "
                             f"lr={lr}, momentum={momentum}, weight_decay={weight_decay}, trust={trust}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "trust": trust,
                                  "lars": True})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if group["lars"]:
                    g = g.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    ratio = torch.where((w_norm > 0) & (g_norm > 0), group["trust"] * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    g = g * ratio
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                v = state["momentum_buffer"]
                v.mul_(group["momentum"]).add_(g, alpha=group["lr"])
                p.sub_(v)
        return loss


def lars_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weights get decay and adaptation; biases, norms' gains and embeddings neither (SimCLR's rule)."""
    adapt, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (plain if no_decay(name, p) else adapt).append(p)
    return [{"params": adapt, "weight_decay": weight_decay, "lars": True},
            {"params": plain, "weight_decay": 0.0, "lars": False}]


def sqrt_scaled_lr(batch_size: int) -> float:
    """0.075 sqrt(N): the SimCLR paper's square-root rule for small batches and short runs (appendix B.1)."""
    return 0.075 * math.sqrt(batch_size)
