"""An exponential moving average of a model's weights (Polyak averaging), kept beside the model
being trained: what generators sample from and what a CLIP run can evaluate and save."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn


class WeightEMA:
    """``ema = d * ema + (1 - d) * weights`` after each optimiser step, with the usual warm-up of the
    decay, ``d = min(decay, (1 + step) / (10 + step))``, so the random initial weights fade fast.
    Buffers (BatchNorm's running statistics) are copied, not averaged."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1 - d)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)

    def save(self, path: Path) -> None:
        save_file({k: v.contiguous().cpu() for k, v in self.model.state_dict().items()}, str(path))

    def load(self, path: Path) -> None:
        self.model.load_state_dict(load_file(str(path)))
