"""What the generators' training tasks share: rows held in memory and batched by the engine's
sampler, an exponential moving average of the weights (what is sampled from), and the engine
settings from :class:`~clipforge.generation.config.GenerationTrainConfig`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from clipforge.data.sampler import epoch_batches
from clipforge.engine import distributed as D
from clipforge.engine.ema import WeightEMA
from clipforge.engine.loop import EngineConfig, fit
from clipforge.engine.schedule import param_groups
from clipforge.engine.task import Task
from clipforge.generation.config import GenerationTrainConfig


def step_generator(seed: int, step: int, rank: int, stream: int = 0) -> torch.Generator:
    """A CPU generator seeded by the run's seed, the step, the rank and a stream number: a resumed
    run draws what the uninterrupted one would."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 4_099 + rank * 17 + stream) % 2**62)


class RowsTask(Task):
    """Rows held in memory (images and/or embeddings), batched by the engine's sampler; the model's
    EMA is updated after each step and is what :meth:`final_weights` gives. ``product`` (set by
    :func:`fit_rows`) is the model saved at the end: the task's model or the one holding it."""

    product: torch.nn.Module | None = None

    def __init__(self, model: torch.nn.Module, rows: dict[str, torch.Tensor], cfg: GenerationTrainConfig,
                 info: D.DistInfo, device: torch.device, ema: float) -> None:
        self.model, self.rows, self.cfg, self.info, self.device = model, rows, cfg, info, device
        self.n = len(next(iter(rows.values())))
        self.ema = WeightEMA(model, ema) if ema else None
        self._optimizers = self.make_optimizers()

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"main": torch.optim.AdamW(param_groups(self.model, self.cfg.weight_decay), lr=self.cfg.peak_lr)}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._optimizers

    def steps_per_epoch(self) -> int:
        return self.n // self.cfg.batch_size

    def batches(self, epoch: int, start: int):
        for rows in epoch_batches(self.n, self.cfg.batch_size, self.cfg.seed, epoch, self.info.rank,
                                  self.info.world_size, start=start):
            idx = torch.as_tensor(rows)
            yield {k: v[idx].to(self.device) for k, v in self.rows.items()}

    def batch_len(self, batch: dict[str, torch.Tensor]) -> int:
        return len(next(iter(batch.values())))

    def split(self, batch: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
        keys = list(batch)
        return [dict(zip(keys, parts)) for parts in zip(*(batch[k].split(size) for k in keys))]

    def skipped(self, batch: Any) -> list:
        return []

    def seeds(self, batch: dict[str, torch.Tensor], step: int) -> list[int]:
        """One seed per sample, from the run's seed, the step and the sample's row."""
        return [(self.cfg.seed * 1_000_003 + step * 100_003 + int(r)) % 2**62 for r in batch["row"].tolist()]

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> dict[str, float]:
        if self.ema is not None:
            self.ema.update(self.model, step)
        return {}

    def final_weights(self) -> torch.nn.Module:
        return self.ema.model if self.ema is not None else self.model

    def use_final_weights(self) -> None:
        """Put the final weights (the EMA when kept) into the trained model."""
        if self.ema is not None:
            self.model.load_state_dict(self.ema.model.state_dict())

    def save_final(self, run_dir: Path) -> Path | None:
        if self.product is None:
            return None
        from clipforge.checkpoints.native import save

        self.use_final_weights()
        return save(self.product, run_dir / "model")

    def save_state(self, folder: Path) -> None:
        super().save_state(folder)
        if self.ema is not None:
            self.ema.save(folder / "ema.safetensors")

    def load_state(self, folder: Path) -> None:
        super().load_state(folder)
        if self.ema is not None:
            self.ema.load(folder / "ema.safetensors")


def engine_config(cfg: GenerationTrainConfig, out_dir: Path, epochs: int, minutes: float | None,
                  label: str, grad_clip: float | None = None) -> EngineConfig:
    return EngineConfig(out_dir=str(out_dir), epochs=epochs, minutes=minutes, max_steps=cfg.max_steps,
                        warmup_steps=cfg.warmup_steps, grad_clip=grad_clip,
                        schedule=cfg.schedule_lr, precision=cfg.precision, micro_batch_size=cfg.micro_batch_size,
                        log_every_steps=cfg.log_every_steps, save_every_minutes=cfg.save_every_minutes,
                        save_each_epoch=False, eval_every_epochs=0, tensorboard=cfg.tensorboard, label=label)


def fit_rows(task: RowsTask, product: torch.nn.Module, config: EngineConfig, info: D.DistInfo,
             device: torch.device, resume: str | None, progress: bool) -> None:
    """Fit ``task`` on the engine; ``product`` (the model it trains, or the one holding it) is saved
    to RUN/model with the final weights, which every rank's model holds afterwards."""
    task.product = product
    fit(task, config, info, device, resume=resume, progress=progress)
    task.use_final_weights()
