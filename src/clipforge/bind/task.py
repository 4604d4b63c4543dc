"""Binding a modality as a task of the engine: InfoNCE between the new encoder's embeddings and the
frozen CLIP's embeddings of the paired images (ImageBind, Girdhar et al. 2023, eq. 1, both
directions summed as their L_{I,M} + L_{M,I}; here averaged, as CLIP's loss), with the modality's
own learnable temperature.

The CLIP is frozen, so its embeddings of the training rows are computed once (``targets``) and only
the modality encoder runs in each step. The loss couples the batch, so ``micro_batch_size`` is
exact (GradCache) up to the encoder's BatchNorm, and under torchrun the features of every rank are
gathered as in CLIP training.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from clipforge.bind.data import ModalityBatch, ModalityFiles, collate_modality
from clipforge.bind.model import BoundCLIP
from clipforge.data.sampler import epoch_batches, steps_per_epoch
from clipforge.engine.distributed import DistInfo, gather_features, reduce_gradients
from clipforge.engine.schedule import param_groups
from clipforge.engine.task import Task
from clipforge.losses.clip import clip_loss

MAX_LOG_SCALE = math.log(100.0)  # the temperature is at least 0.01, as CLIP's


class BindTask(Task):
    min_batch = 2

    def __init__(self, model: BoundCLIP, modality: str, files: list[str], targets: torch.Tensor, *, batch_size: int,
                 lr: float, weight_decay: float, seed: int, workers: int, info: DistInfo, device: torch.device,
                 evaluate_fn: Any = None, cache_inputs: bool = True) -> None:
        self.model, self.modality, self.targets = model, modality, targets
        self.batch_size, self.seed, self.workers, self.info, self.device = batch_size, seed, workers, info, device
        self.dataset = ModalityFiles(files, model.inputs[modality], cache=cache_inputs and workers == 0)
        model.lock_clip()
        model.train()
        self.optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr)
        self.evaluate_fn = evaluate_fn
        self.evaluate_at_end = evaluate_fn is not None
        self.adjusted: Counter = Counter()  # files used after a change (resampled, resized, ...)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"main": self.optimizer}

    def steps_per_epoch(self) -> int:
        return steps_per_epoch(len(self.dataset), self.batch_size)

    def batches(self, epoch: int, start: int):
        order = epoch_batches(len(self.dataset), self.batch_size, self.seed, epoch, self.info.rank,
                              self.info.world_size, start)
        for batch in DataLoader(self.dataset, batch_sampler=order, num_workers=self.workers,
                                collate_fn=collate_modality):
            self.adjusted.update(batch.notes)
            yield ModalityBatch(batch.indices, batch.inputs.to(self.device), batch.skipped, batch.notes)

    def embed(self, batch: ModalityBatch) -> dict[str, torch.Tensor]:
        feats = self.model.encode(self.modality, batch.inputs, normalize=True)
        return {"modality": feats if feats.dtype == torch.float64 else feats.float()}

    def loss_from(self, embeddings: dict[str, torch.Tensor], batch: ModalityBatch) -> dict[str, Any]:
        mod, _ = gather_features(embeddings["modality"], self.info)
        target, _ = gather_features(self.targets[batch.indices].to(mod.device, mod.dtype), self.info)
        log_scale = self.model.logit_scales[self.modality]
        scale = log_scale.clamp(max=MAX_LOG_SCALE).exp()
        return {"loss": clip_loss(mod, F.normalize(target, dim=-1), scale)}

    def split(self, batch: ModalityBatch, size: int) -> list[ModalityBatch]:
        return [ModalityBatch(i, x, [], Counter()) for i, x in zip(batch.indices.split(size), batch.inputs.split(size))]

    def batch_len(self, batch: ModalityBatch) -> int:
        return len(batch)

    def reduce_gradients(self, info: DistInfo) -> None:
        reduce_gradients(self.model, info, averaged=(f"logit_scales.{self.modality}",))

    def after_optimizer_step(self, step: int, total_steps: int) -> dict[str, float]:
        with torch.no_grad():
            p = self.model.logit_scales[self.modality]
            p.clamp_(0.0, MAX_LOG_SCALE)
            return {"temperature": float(torch.exp(-p))}

    def evaluate(self, epoch: int, last: bool) -> dict[str, Any]:
        if self.evaluate_fn is None:
            return {}
        self.model.eval()
        try:
            return self.evaluate_fn(self.model)
        finally:
            self.model.train()

    def save_final(self, run_dir: Path) -> Path:
        from clipforge.checkpoints.native import save

        return save(self.model, run_dir / "model")
