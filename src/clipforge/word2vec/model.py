"""The skip-gram model: an input vector per centre word and an output vector per context word."""

from __future__ import annotations

import torch
from torch import nn

from clipforge.losses.nce import negative_sampling_loss


class SkipGram(nn.Module):
    """Args: vocab_size; dim (vector width). Input vectors start uniform in +-0.5/dim, output
    vectors at zero, as in the reference implementation."""

    def __init__(self, vocab_size: int, dim: int = 64) -> None:
        super().__init__()
        self.inp = nn.Embedding(vocab_size, dim, sparse=True)
        self.out = nn.Embedding(vocab_size, dim, sparse=True)
        nn.init.uniform_(self.inp.weight, -0.5 / dim, 0.5 / dim)
        nn.init.zeros_(self.out.weight)

    def forward(self, center: torch.Tensor, context: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """center [B], context [B], negatives [B, k] (word ids) -> mean negative-sampling loss."""
        return negative_sampling_loss(self.inp(center), self.out(context), self.out(negatives))

    def vectors(self) -> torch.Tensor:
        return self.inp.weight.detach()
