"""What a training task gives the engine (:func:`clipforge.engine.fit`).

A task is its model, its optimiser(s), its data and one ``training_step``; the engine does the rest
(device, precision, accumulation, distribution, clipping, schedule, non-finite policy, logging,
evaluation, checkpoints, resume, summary). The smallest task::

    class Regression(Task):
        def __init__(self, model, data):
            self.model, self.data = model, data
            self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def optimizers(self):
            return {"main": self.optimizer}

        def steps_per_epoch(self):
            return len(self.data)

        def batches(self, epoch, start):
            return self.data[start:]

        def training_step(self, batch, ctx):
            x, y = batch
            return {"loss": F.mse_loss(self.model(x), y)}

A loss that couples the samples of a batch (CLIP's, SimCLR's) makes plain gradient accumulation
wrong; such a task splits ``training_step`` into :meth:`Task.embed` (per-sample embeddings) and
:meth:`Task.loss_from` (the loss of the whole batch's embeddings), and the engine's micro-batching
caches the embeddings (GradCache), which is exact. A task with several optimisers (a GAN's generator
and discriminator) sets ``manual_optimization = True`` and calls ``ctx.backward`` and
``ctx.optimizer_step`` itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clipforge.engine.distributed import DistInfo, average_gradients


class Task:
    """Base class of training tasks; override what the task needs (see the module docstring)."""

    model: nn.Module
    manual_optimization: bool = False
    min_batch: int = 1  # smaller batches are skipped (counted as non-finite steps)
    evaluate_at_end: bool = False  # also evaluate when training ends between evaluation epochs
    local_coefficients: dict[str, float] = {}  # weights of embed's "_name" terms in the loss (default 1)

    # --- required -----------------------------------------------------------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def steps_per_epoch(self) -> int:
        raise NotImplementedError

    def batches(self, epoch: int, start: int) -> Iterable[Any]:
        """This rank's batches of ``epoch`` from batch ``start`` on (deterministic: resume needs it)."""
        raise NotImplementedError

    def training_step(self, batch: Any, ctx: Any) -> dict[str, Any]:
        """``{"loss": tensor with graph, other scalars}``; by default ``loss_from(embed(batch))`` plus the
        per-sample terms ``embed`` returned (see :meth:`embed`)."""
        with ctx.autocast():
            embeddings = self.embed(batch)
        out = self.loss_from({k: v for k, v in embeddings.items() if not k.startswith("_")}, batch)
        return add_local_terms(out, embeddings, self.local_coefficients)

    # --- exact micro-batching for losses that couple the batch -----------------------------------
    def embed(self, batch: Any) -> dict[str, torch.Tensor]:
        """Per-sample embeddings (the inputs of :meth:`loss_from`). Keys starting with ``_`` are instead
        loss terms that do not couple the batch, computed in the same forward (CoCa's captioning
        loss), as *sums* over the batch's units (samples, tokens): the loss gains
        ``local_coefficients[name] * local_norm * sum``, where ``loss_from`` returns ``"local_norm"``
        (one over the global batch's units; default 1) and ``name`` is logged as ``local_norm * sum``.
        Sums make micro-batching exact whatever each micro-batch's share of the units. The terms
        need a graph: the first, graph-free GradCache pass may leave them out."""
        raise NotImplementedError

    def loss_from(self, embeddings: dict[str, torch.Tensor], batch: Any) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def couples_batch(self) -> bool:
        return type(self).loss_from is not Task.loss_from

    def split(self, batch: Any, size: int) -> list[Any]:
        """``batch`` in micro-batches of ``size`` (tensors, tuples/lists of them, or dataclasses)."""
        raise NotImplementedError(f"{type(self).__name__} does not support micro_batch_size")

    def batch_len(self, batch: Any) -> int:
        return len(batch)

    def loss_units(self, batch: Any) -> float | None:
        """What a per-unit mean loss averages over, when units are not samples (a captioner's caption
        tokens): micro-batches and ranks are then weighted by their share of the global batch's units,
        so accumulation and distribution give the global batch's mean exactly. ``None``: samples."""
        return None

    def skipped(self, batch: Any) -> list:
        return list(getattr(batch, "skipped", []))

    # --- hooks ------------------------------------------------------------------------------------
    def reduce_gradients(self, info: DistInfo) -> None:
        """Make each rank's gradients the global batch's (default: average over ranks)."""
        average_gradients(self.model, info)

    def after_optimizer_step(self, step: int, total_steps: int) -> dict[str, float]:
        """After each step (EMA targets, clamps); returns extra scalars to log."""
        return {}

    def evaluate(self, epoch: int, last: bool) -> dict[str, Any]:
        return {}

    def save_final(self, run_dir: Path) -> Path | None:
        """Write the trained model (the run's product); returns where."""
        return None

    # --- checkpoints ------------------------------------------------------------------------------
    def save_state(self, folder: Path) -> None:
        from safetensors.torch import save_file

        from clipforge.checkpoints.state_dict import unshared

        save_file({k: v.detach().contiguous().cpu() for k, v in unshared(self.model.state_dict()).items()},
                  str(folder / "model.safetensors"))

    def load_state(self, folder: Path) -> None:
        from clipforge.checkpoints.state_dict import load_strict, read_state_dict

        load_strict(self.model, read_state_dict(folder / "model.safetensors"), str(folder))




def add_local_terms(out: dict[str, Any], embeddings: dict[str, Any],
                    coefficients: dict[str, float]) -> dict[str, Any]:
    """``out`` with ``embed``'s local terms (keys ``_name``) added to its loss and logged as ``name``
    (see :meth:`Task.embed`)."""
    norm = out.pop("local_norm", 1.0)
    for key, term in embeddings.items():
        if key.startswith("_"):
            value = norm * term
            out["loss"] = out["loss"] + coefficients.get(key[1:], 1.0) * value
            out[key[1:]] = value.detach()
    return out
