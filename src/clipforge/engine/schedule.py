"""AdamW parameter groups (no decay on gains, biases, embeddings, temperature) and the learning-rate
schedule: linear warm-up, then cosine decay, linear decay (Hugging Face's and sentence-transformers'
default) or constant."""

from __future__ import annotations

import math

import torch
from torch import nn

# Parameters that are embeddings (looked up or added, not multiplied): no weight decay.
_EMBEDDING_NAMES = ("token_embedding", "positional_embedding", "class_embedding", "embeddings.", "logit_scale")


def no_decay(name: str, param: torch.Tensor, decay_embeddings: bool = False) -> bool:
    """Gains, biases (1-D), embeddings and the temperature are not decayed. ``decay_embeddings``:
    open_clip's rule instead, which decays the 2-D token and positional embeddings too (every
    parameter of two or more dimensions but the temperature)."""
    if decay_embeddings:
        return param.ndim < 2 or "logit_scale" in name
    return param.ndim < 2 or any(part in name for part in _EMBEDDING_NAMES)


def param_groups(model: nn.Module, weight_decay: float, decay_embeddings: bool = False) -> list[dict]:
    decay, plain = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (plain if no_decay(name, p, decay_embeddings) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def learning_rate(step: int, base_lr: float, warmup: int, total: int, schedule: str = "cosine") -> float:
    """Linear warmup over ``warmup`` steps, then cosine or linear decay to 0 at ``total`` (or constant)."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant":
        return base_lr
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return base_lr * max(0.0, 1.0 - progress)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress))) * base_lr
