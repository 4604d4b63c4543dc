"""One step's forward and backward, exact at any micro-batch size.

* Whole batch: ``task.training_step(batch)`` and its loss's backward.
* Micro-batches, loss that couples the batch (the task defines ``embed`` and ``loss_from``):
  GradCache (Gao et al. 2021): (1) every micro-batch's embeddings without a graph; (2) the loss of
  the whole batch from them, and its gradient with respect to the embeddings and to any parameter
  the loss itself holds (CLIP's temperature gets its gradient once, here); (3) each micro-batch
  again with a graph, back-propagating the cached embedding gradients. The result equals the full
  batch's gradients. (open_clip's accumulation sums K micro-batch losses' temperature gradients,
  K times the true one.)
* Micro-batches, loss that is a mean over samples: each micro-batch's loss weighted by its share.
  A mean over other units (caption tokens, :meth:`Task.loss_units`) is weighted by each
  micro-batch's share of the units, and each rank's by its share of the global batch's units (the
  ranks' gradients are then averaged), so the result is the global batch's mean.

Models must be deterministic between the two passes (no dropout). BatchNorm is the one exception
to exactness: in train mode it normalises each micro-batch by that micro-batch's statistics, so a
BatchNorm tower gets the gradients of per-micro-batch normalisation. Its running statistics are
still updated once per step (:class:`BatchNormOncePerStep`), never by the first pass; tasks warn
when a BatchNorm model is micro-batched (:func:`micro_batching_is_inexact`).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch.nn.modules.batchnorm import _BatchNorm


def _batchnorms(model: torch.nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]


def micro_batching_is_inexact(model: torch.nn.Module) -> bool:
    """True when the model has BatchNorm layers in train mode (their statistics follow the micro-batch)."""
    return bool(_batchnorms(model))


class BatchNormOncePerStep:
    """One running-statistics update per optimiser step, however many forward passes it takes.

    ``with stats.collect():`` around the no-grad first pass records each BatchNorm's micro-batch
    statistics (momentum 1 makes the running buffers hold them); :meth:`commit` after the second
    pass (and any gradient-checkpointing recomputation) restores the buffers and applies a single
    update with the mean of the recorded statistics, as a full batch would: new = (1 - m) old + m stat.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.layers = _batchnorms(model)
        self.saved = [(bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
                      for bn in self.layers]
        self.sums = [[torch.zeros_like(bn.running_mean), torch.zeros_like(bn.running_var), 0] for bn in self.layers]

    @contextlib.contextmanager
    def collect(self):
        momenta = [bn.momentum for bn in self.layers]
        hooks = [bn.register_forward_hook(self._record(i)) for i, bn in enumerate(self.layers)]
        for bn in self.layers:
            bn.momentum = 1.0
        try:
            yield
        finally:
            for bn, m, h in zip(self.layers, momenta, hooks):
                bn.momentum = m
                h.remove()

    def _record(self, i: int):
        def hook(bn: _BatchNorm, _inputs, _output) -> None:
            acc = self.sums[i]
            acc[0] += bn.running_mean
            acc[1] += bn.running_var
            acc[2] += 1
        return hook

    @torch.no_grad()
    def commit(self) -> None:
        for bn, (mean, var, count), (sum_mean, sum_var, n) in zip(self.layers, self.saved, self.sums):
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.num_batches_tracked.copy_(count)
            if not n:
                continue
            bn.num_batches_tracked += 1
            m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            bn.running_mean.mul_(1 - m).add_(sum_mean / n, alpha=m)
            bn.running_var.mul_(1 - m).add_(sum_var / n, alpha=m)


def forward_backward(task: Any, batch: Any, ctx: Any) -> dict[str, Any]:
    """Forward and backward of one (global) batch; gradients accumulate into ``.grad``."""
    n = task.batch_len(batch)
    if n < getattr(task, "min_batch", 1):
        return {"loss": torch.tensor(float("nan"))}
    micro = ctx.micro_batch_size
    units = task.loss_units(batch)
    weight = 1.0 if units is None else _rank_weight(units, ctx)
    if not micro or micro >= n:
        out = task.training_step(batch, ctx)
        ctx.backward(out["loss"] * weight if weight != 1.0 else out["loss"])
        return _detached(out)
    chunks = task.split(batch, micro)
    if task.couples_batch:
        return _grad_cache(task, batch, chunks, ctx)
    totals: dict[str, float] = {}
    for chunk in chunks:
        share = task.batch_len(chunk) / n if units is None else task.loss_units(chunk) / max(units, 1e-12)
        out = task.training_step(chunk, ctx)
        ctx.backward(out["loss"] * (share * weight))
        for k, v in _detached(out).items():
            totals[k] = totals.get(k, 0.0) + float(v) * share
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in totals.items()}


def _rank_weight(units: float, ctx: Any) -> float:
    """This rank's share of the global batch's loss units, times the number of ranks (the ranks'
    gradients are averaged afterwards); 1 in one process."""
    info = ctx.dist
    if not info.enabled:
        return 1.0
    import torch.distributed as dist

    total = torch.tensor([units], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(total)
    return units * info.world_size / max(float(total), 1e-12)


def _grad_cache(task: Any, batch: Any, chunks: list, ctx: Any) -> dict[str, Any]:
    batchnorm = BatchNormOncePerStep(task.model)
    with torch.no_grad(), ctx.autocast(), batchnorm.collect():
        parts = [{k: v for k, v in task.embed(c).items() if not k.startswith("_")} for c in chunks]
    cached = {k: torch.cat([p[k] for p in parts]).requires_grad_() for k in parts[0]}
    out = task.loss_from(cached, batch)
    norm = out.pop("local_norm", 1.0)
    coefficients = getattr(task, "local_coefficients", {})
    ctx.backward(out["loss"])  # embedding gradients + the loss's own parameters', once
    start, local = 0, {}
    for chunk in chunks:
        end = start + task.batch_len(chunk)
        with ctx.autocast():
            emb = task.embed(chunk)
        keys = [k for k in emb if not k.startswith("_")]
        terms = [k for k in emb if k.startswith("_")]  # local sums: each micro-batch's own (see Task.embed)
        for k in terms:
            local[k[1:]] = local.get(k[1:], 0.0) + float(emb[k].detach()) * norm
        scaled = [ctx.scale_loss(emb[k] * (coefficients.get(k[1:], 1.0) * norm)) for k in terms]
        torch.autograd.backward([emb[k] for k in keys] + scaled,
                                [cached[k].grad[start:end] for k in keys] + [None] * len(terms))
        start = end
    batchnorm.commit()
    out = _detached(out)
    for name, value in local.items():
        out["loss"] = out["loss"] + coefficients.get(name, 1.0) * value
        out[name] = torch.tensor(value)
    return out


def _detached(out: dict[str, Any]) -> dict[str, Any]:
    return {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in out.items()}
