"""Distributed helpers: run unchanged under ``torchrun`` (gloo on CPU, NCCL on GPU).

The engine does not wrap models in DDP; a task makes each rank's gradients the global batch's
(:meth:`Task.reduce_gradients`). A contrastive task computes the loss of the *global* batch
(features all-gathered, its own slot keeping the graph), so its backward yields exactly its own
samples' share of the global gradient; summing those shares over ranks (:func:`reduce_gradients`)
gives the single-process gradient, and parameters every rank computed whole (the temperature) are
averaged. A task whose loss is a per-sample mean averages (:func:`average_gradients`). DDP's
averaging of a contrastive loss would instead give 1/world_size of the gradient (open_clip's default).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the process group torchrun describes in the environment; a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local)


def default_device(info: DistInfo, device: str | None = None) -> torch.device:
    """``device`` if given, else this rank's CUDA device when there is one, else the CPU."""
    if device:
        from clipforge.errors import ConfigError

        try:
            chosen = torch.device(device)
        except RuntimeError:
            raise ConfigError(f"device {device!r} is not a device (expected cpu, cuda, cuda:N, ...)") from None
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: CUDA is not available on this machine")
        return chosen
    return torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")


def gather_features(local: torch.Tensor, info: DistInfo) -> tuple[torch.Tensor, int]:
    """All ranks' features concatenated in rank order; this rank's slot is ``local`` itself (with
    its graph). Ranks may hold different counts (skipped samples). Returns (global, offset)."""
    if not info.enabled:
        return local, 0
    from clipforge.losses.distributed import rank_sizes

    sizes_i = rank_sizes(local.shape[0], local.device)
    biggest = max(sizes_i)
    padded = local.new_zeros((biggest, *local.shape[1:]))
    padded[: local.shape[0]] = local.detach()
    parts = [torch.zeros_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded)
    pieces = [p[:s] for p, s in zip(parts, sizes_i)]
    pieces[info.rank] = local
    return torch.cat(pieces), sum(sizes_i[: info.rank])


def reduce_gradients(model: torch.nn.Module, info: DistInfo, averaged: tuple[str, ...] = ("logit_scale",)) -> None:
    """Sum the per-rank gradient shares; average those every rank computed whole."""
    if not info.enabled:
        return
    for name, p in model.named_parameters():
        if p.grad is None:
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
            else:
                continue
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        if name in averaged:
            p.grad.div_(info.world_size)


def broadcast_parameters(model: torch.nn.Module, info: DistInfo) -> None:
    if info.enabled:
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def average_gradients(model: torch.nn.Module, info: DistInfo) -> None:
    """Average every gradient over ranks: each rank's loss is its own samples' mean (SSL, most tasks)."""
    if not info.enabled:
        return
    for p in model.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad.div_(info.world_size)
