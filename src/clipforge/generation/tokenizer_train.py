"""Training the image tokenizers (:mod:`~clipforge.generation.dvae`, :mod:`~clipforge.generation.vqvae`)
as tasks of the engine: images held in memory as uint8, their reconstruction loss per step.

The dVAE's Gumbel noise and the VQ-VAE's code restarts are drawn from the run's seed, the step and
the rank, so a resumed run continues what the uninterrupted one would have done.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from clipforge.engine import distributed as D
from clipforge.generation.config import GenerationTrainConfig
from clipforge.generation.dvae import DiscreteVAE, DVAEConfig
from clipforge.generation.image_tokenizer import ImageTokenizer
from clipforge.generation.rows_task import RowsTask, engine_config, fit_rows, step_generator
from clipforge.generation.vqvae import VQVAE, VQVAEConfig


def tokenizer_from_options(cfg: GenerationTrainConfig) -> ImageTokenizer:
    o = cfg.image_tokenizer
    shared = {"image_size": cfg.image_size, "codebook_size": o.codebook_size, "downsamples": o.downsamples,
              "channels": o.channels, "code_dim": o.code_dim}
    if cfg.method == "dvae":
        return DiscreteVAE(DVAEConfig(**shared, temperature_end=o.temperature_end, anneal_steps=o.anneal_steps,
                                      kl_weight=o.kl_weight, kl_warmup_steps=o.kl_warmup_steps))
    return VQVAE(VQVAEConfig(**shared, commitment=o.commitment, ema_decay=o.ema_decay,
                             restart_below=o.restart_below))


class TokenizerTask(RowsTask):
    """Reconstruction of uint8 image rows (dVAE: negative ELBO; VQ-VAE: MSE + commitment)."""

    def training_step(self, batch: dict[str, torch.Tensor], ctx: Any) -> dict[str, Any]:
        x = batch["images"].float() / 127.5 - 1
        g = step_generator(self.cfg.seed, ctx.step, self.info.rank, stream=7)
        with ctx.autocast():
            if isinstance(self.model, DiscreteVAE):
                grid = self.model.grid
                uniform = torch.rand((len(x), self.model.codebook_size, grid, grid), generator=g).to(self.device)
                return self.model.loss(x, ctx.step, uniform)
            return self.model.loss(x, g)


def train_tokenizer(cfg: GenerationTrainConfig, images: torch.Tensor, info: D.DistInfo, device: torch.device,
                    resume: str | None, progress: bool) -> ImageTokenizer:
    """Train a ``dvae`` or ``vqvae`` on uint8 ``images``; saved to ``OUT_DIR/model`` and returned."""

    model = tokenizer_from_options(cfg).to(device)
    D.broadcast_parameters(model, info)
    # No weight average: the VQ codebook follows the live encoder (it is itself a moving average).
    task = TokenizerTask(model, {"images": images, "row": torch.arange(len(images))}, cfg, info, device, 0.0)

    fit_rows(task, model, engine_config(cfg, Path(cfg.out_dir), cfg.epochs, cfg.minutes, f"generate {cfg.method}"),
             info, device, resume, progress)
    return model.eval()
