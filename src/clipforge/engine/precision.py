"""Training precision: ``fp32``, ``bf16`` / ``fp16`` autocast, or ``auto`` (bf16 where the hardware
computes it natively, fp32 elsewhere)."""

from __future__ import annotations

from typing import Literal

import torch

Precision = Literal["fp32", "bf16", "fp16", "auto"]
PRECISIONS = ("fp32", "bf16", "fp16", "auto")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: a CUDA GPU that supports it, or a CPU with
    AVX512-BF16 or AMX (elsewhere bf16 autocast on the CPU is emulated and slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes: read the CPU flags
        try:
            with open("/proc/cpuinfo") as f:
                flags = next((line for line in f if line.startswith("flags")), "").split()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags


def check_precision(precision: str) -> None:
    """Refuse an unknown precision in one line, before any work."""
    if precision not in PRECISIONS:
        from clipforge.errors import ConfigError

        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` as what it means on ``device``; any other value unchanged."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"

PRECISION_HELP = ("'fp32', 'bf16' (autocast), 'fp16' (autocast with loss scaling; CUDA only) or 'auto' (bf16 where "
                  "the GPU or CPU computes it natively, e.g. AVX512-BF16 or AMX; else fp32)")
