"""Choosing the next token from logits: temperature, top-k and top-p (nucleus, Holtzman et al. 2020).

Draws are made on the CPU with the caller's generator, so a seed gives the same tokens on every
device and with or without a key/value cache.
"""

from __future__ import annotations

import torch

from clipforge.errors import ConfigError


def check_options(temperature: float, top_k: int, top_p: float) -> None:
    if temperature < 0:
        raise ConfigError(f"temperature must be at least 0 (0: the most likely token), got {temperature}")
    if top_k < 0:
        raise ConfigError(f"top_k must be at least 0 (0: off), got {top_k}")
    if not 0 < top_p <= 1:
        raise ConfigError(f"top_p must be in (0, 1] (1: off), got {top_p}")


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Logits [B, V] with everything outside the top ``k`` and outside the smallest set whose
    probability reaches ``top_p`` set to -inf (the most likely token always stays)."""
    out = logits.clone()
    if 0 < top_k < out.shape[-1]:
        kth = out.topk(top_k, dim=-1).values[:, -1:]
        out[out < kth] = float("-inf")
    if top_p < 1:
        sorted_logits, order = out.sort(-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # the mass before this token already reaches top_p
        out.scatter_(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return out


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of ``logits`` [B, V] (temperature 0: the argmax)."""
    logits = logits.detach().float().cpu()
    if temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
