"""Which kernel computes ``F.scaled_dot_product_attention`` in a training step.

PyTorch runs flash attention on the CPU whenever it can. In bf16 (what bf16 autocast hands the
attention) its backward is slow at the sequence lengths most CLIP towers have: forward + backward
with the plain math kernel is 2.0-4.4x faster up to 77 tokens and 1.1x at 197 (ViT-B/16), but
0.7-0.9x at 257 (ViT-L/14) and 0.6x at 577 (ViT-L/14 at 336 px); in fp32 neither kernel is ahead
everywhere. Both are equally exact (``bench/attention_kernels.py``; docs/benchmarks.md). So ``auto``
takes the math kernel under bf16 on the CPU and leaves PyTorch's choice everywhere else, CUDA
included (its flash kernels are the fast ones there); towers of 257 tokens and more are faster
with ``attention=default``. The math kernel keeps the attention weights (batch x heads x tokens^2
per layer) for the backward, where flash keeps one value per token.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

Attention = Literal["auto", "default", "math", "flash", "efficient"]
ATTENTIONS = ("auto", "default", "math", "flash", "efficient")
ATTENTION_HELP = ("the scaled-dot-product attention kernel in training steps: 'auto' (the math kernel under bf16 on "
                  "the CPU, 2-4x faster than PyTorch's flash there up to 77 tokens, 1.1x at 197; PyTorch's "
                  "choice elsewhere), 'default' (PyTorch's choice: better for towers of 257+ tokens), 'math', "
                  "'flash' or 'efficient' (the kernel where it applies, math where it does not)")


def check_attention(attention: str) -> None:
    """Refuse an unknown kernel name in one line, before any work."""
    if attention not in ATTENTIONS:
        from clipforge.errors import ConfigError

        raise ConfigError(f"attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")


def resolve_attention(attention: str, device: torch.device, precision: str) -> str:
    """``auto`` as what it means for ``device`` and the (resolved) ``precision``; others unchanged."""
    check_attention(attention)
    if attention != "auto":
        return attention
    return "math" if device.type == "cpu" and precision == "bf16" else "default"


def attention_kernel(attention: str) -> contextlib.AbstractContextManager:
    """A context in which scaled-dot-product attention runs on the (resolved) ``attention`` kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if attention == "default":
        return contextlib.nullcontext()
    chosen = {"math": [SDPBackend.MATH],
              # The kernel where its constraints hold (masks, head sizes), else the math one: never an error.
              "flash": [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH],
              "efficient": [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]}
    if attention not in chosen:
        raise ValueError(f"resolve attention={attention!r} with resolve_attention first")
    return sdpa_kernel(chosen[attention])
