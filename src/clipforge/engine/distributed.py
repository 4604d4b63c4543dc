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

import logging
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
    if dist.get_rank() != 0:  # rank 0 speaks for the job; the others only report errors
        logging.getLogger("clipforge").setLevel(logging.ERROR)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local)


def current_dist() -> DistInfo:
    """The process group already joined (by :func:`init_distributed` or the caller), or one process."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


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
    from clipforge.losses.distributed import all_gather_rows, rank_sizes

    sizes = rank_sizes(local.shape[0], local.device)
    pieces = all_gather_rows(local, sizes)
    pieces[info.rank] = local
    return torch.cat(pieces), sum(sizes[: info.rank])


# Gradients travel in flat buckets of about this size, each all-reduce launched as soon as its
# bucket is packed (DDP's default bucket is 25 MB): a few collectives per step instead of one per
# parameter, and packing the next bucket overlaps the previous one's communication.
BUCKET_BYTES = 25 * 1024 * 1024


def _all_reduce_buckets(grads: list[torch.Tensor], bucket_bytes: int = BUCKET_BYTES) -> None:
    """Sum ``grads`` over ranks in place, in flat buckets of one dtype and device."""
    buckets: list[list[torch.Tensor]] = []
    size = 0
    for g in grads:
        if g.is_sparse:  # an embedding's sparse gradient (word2vec) is reduced on its own
            dist.all_reduce(g, op=dist.ReduceOp.SUM)
            continue
        if not buckets or size + g.numel() * g.element_size() > bucket_bytes or \
                (g.dtype, g.device) != (buckets[-1][0].dtype, buckets[-1][0].device):
            buckets.append([])
            size = 0
        buckets[-1].append(g)
        size += g.numel() * g.element_size()
    pending = []
    for bucket in buckets:
        flat = torch.cat([g.reshape(-1) for g in bucket])
        pending.append((dist.all_reduce(flat, op=dist.ReduceOp.SUM, async_op=True), flat, bucket))
    for work, flat, bucket in pending:
        work.wait()
        offset = 0
        for g in bucket:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def _grads(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Every trainable parameter's gradient (zeros for one this rank's step did not reach)."""
    out = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        out.append((name, p.grad))
    return out


def reduce_gradients(model: torch.nn.Module, info: DistInfo, averaged: tuple[str, ...] = ("logit_scale",)) -> None:
    """Sum the per-rank gradient shares; average those every rank computed whole."""
    if not info.enabled:
        return
    grads = _grads(model)
    _all_reduce_buckets([g for _, g in grads])
    for name, g in grads:
        if name in averaged:
            g.div_(info.world_size)


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
    grads = [g for _, g in _grads(model)]
    _all_reduce_buckets(grads)
    for g in grads:
        g.div_(info.world_size)
