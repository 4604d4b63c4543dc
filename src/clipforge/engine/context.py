"""What the engine hands a task's ``training_step``: precision, device, ranks, and (for tasks that
optimise by hand) backward and optimiser steps with the engine's policies."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch

from clipforge.engine.attention import attention_kernel, resolve_attention
from clipforge.engine.distributed import DistInfo
from clipforge.engine.precision import resolve_precision


def finite_flag(loss: torch.Tensor | None, module: torch.nn.Module) -> torch.Tensor | None:
    """A 0-dim tensor on the gradients' device: whether ``loss`` (if given) and all of ``module``'s
    gradients are finite (sparse ones included); ``None`` when it has no gradients. Reading it is one
    sync, where a check per gradient would be one each."""
    grads = [p.grad.coalesce().values() if p.grad.is_sparse else p.grad for p in module.parameters()
             if p.grad is not None]
    if not grads:
        return None
    checks = [torch.isfinite(g).all() for g in grads]
    if loss is not None:
        checks.append(torch.isfinite(loss).all().to(checks[0].device))
    return torch.stack(checks).all()


def grads_finite(module: torch.nn.Module, loss: torch.Tensor | None = None) -> bool:
    """Whether ``module`` has gradients and they (and ``loss``, if given) are all finite."""
    flag = finite_flag(loss, module)
    return flag is not None and bool(flag)


@dataclass
class StepContext:
    dist: DistInfo
    device: torch.device
    precision: str
    micro_batch_size: int | None
    optimizers: dict[str, torch.optim.Optimizer]
    task: Any
    grad_clip: float | None = None
    attention: str = "auto"  # the attention kernel (engine.attention); resolved with the precision
    step: int = 0  # the optimiser step being taken (seeds per-step randomness, e.g. augmentations)
    scaler: Any = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.precision = resolve_precision(self.precision, self.device)
        self.attention = resolve_attention(self.attention, self.device, self.precision)
        # fp16 needs loss scaling (CUDA only); bf16 has fp32's range and needs none.
        if self.precision == "fp16":
            if self.device.type != "cuda":
                from clipforge.errors import ConfigError

                raise ConfigError("precision=fp16 needs a CUDA device; use bf16 on the CPU")
            self.scaler = torch.amp.GradScaler("cuda")

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward's context: the precision's autocast and the attention kernel."""
        stack = contextlib.ExitStack()
        if self.precision != "fp32":
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            stack.enter_context(torch.autocast(self.device.type, dtype=dtype))
        stack.enter_context(attention_kernel(self.attention))
        return stack

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss`` as fp16 loss scaling back-propagates it (unchanged otherwise)."""
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def backward(self, loss: torch.Tensor) -> None:
        self.scale_loss(loss).backward()

    def clip_and_step(self, optimizers: dict[str, torch.optim.Optimizer] | None = None) -> None:
        """Clip the global gradient norm of each optimiser's parameters, then step it."""
        for opt in (optimizers or self.optimizers).values():
            if self.scaler is not None:
                self.scaler.unscale_(opt)
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(self._in_model_order(opt), self.grad_clip)
            if self.scaler is not None:
                self.scaler.step(opt)
            else:
                opt.step()
        if self.scaler is not None:
            self.scaler.update()

    def _in_model_order(self, opt: torch.optim.Optimizer) -> list[torch.Tensor]:
        # The norm is summed in the model's parameter order, whatever the optimiser's grouping: the
        # same order gives the same bits, and so the same run as a plain loop over model.parameters().
        mine = {id(p): p for g in opt.param_groups for p in g["params"] if p.grad is not None}
        ordered = [p for p in self.task.model.parameters() if id(p) in mine]
        seen = {id(p) for p in ordered}
        return ordered + [p for i, p in mine.items() if i not in seen]

    def optimizer_step(self, name: str, loss: torch.Tensor, module: torch.nn.Module) -> bool:
        """For tasks with several optimisers: backward ``loss``, make ``module``'s gradients the global
        batch's, and step optimiser ``name`` if they are finite. Returns whether it stepped."""
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        self.backward(loss)
        from clipforge.engine.distributed import average_gradients

        average_gradients(module, self.dist)
        if not grads_finite(module, loss):
            opt.zero_grad(set_to_none=True)
            return False
        self.clip_and_step({name: opt})
        return True
