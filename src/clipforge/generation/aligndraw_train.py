"""Training alignDRAW (:mod:`clipforge.generation.aligndraw`) as a task of the engine: the negative
ELBO of (image, caption) rows, with the posterior's noise drawn from the run's seed and the step (so
resume is exact). The loss is optimised per pixel (the ELBO over the image's pixels); the log keeps
it in nats per image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from clipforge.engine import distributed as D
from clipforge.generation.aligndraw import AlignDRAW, AlignDRAWConfig, to_unit
from clipforge.generation.caption_tokens import caption_ids, train_caption_tokenizer
from clipforge.generation.config import GenerationTrainConfig
from clipforge.generation.rows_task import RowsTask, engine_config, fit_rows, step_generator


class AlignDRAWTask(RowsTask):
    def training_step(self, batch: dict[str, torch.Tensor], ctx: Any) -> dict[str, Any]:
        c = self.model.config
        x = to_unit(batch["images"])
        g = step_generator(self.cfg.seed, ctx.step, self.info.rank)
        noise = torch.randn((len(x), c.steps, c.z_dim), generator=g).to(self.device)
        with ctx.autocast():
            text = self.model.encode_captions(batch["ids"], batch["lengths"])
            out = self.model.loss(x, text, noise)
        pixels = x[0].numel()
        return {"loss": out["loss"].mean() / pixels, "elbo_nats": -out["loss"].mean().detach(),
                "kl": out["kl"].mean().detach(), "mse": out["mse"].mean().detach()}


def train_aligndraw(cfg: GenerationTrainConfig, clip: Any, images: torch.Tensor, captions: list[str], link: dict,
                    info: D.DistInfo, device: torch.device, resume: str | None, progress: bool) -> AlignDRAW:
    """Train alignDRAW on uint8 ``images`` and their ``captions``; saved to ``OUT_DIR/model``."""

    tokenizer = train_caption_tokenizer(captions, cfg.text_vocab, cfg.text_length)
    ids, lengths = caption_ids(tokenizer, captions)
    o = cfg.aligndraw
    model = AlignDRAW(AlignDRAWConfig(image_size=cfg.image_size, vocab_size=tokenizer.vocab_size,
                                      text_length=cfg.text_length, steps=o.steps, read_size=o.read_size,
                                      write_size=o.write_size, z_dim=o.z_dim, hidden=o.hidden,
                                      text_hidden=o.text_hidden, pixel_std=o.pixel_std, **link)).to(device)
    model.tokenizer = tokenizer
    D.broadcast_parameters(model, info)
    rows = {"images": images, "ids": ids, "lengths": lengths, "row": torch.arange(len(images))}
    task = AlignDRAWTask(model, rows, cfg, info, device, cfg.ema)

    # LSTMs over 16 steps: clipping keeps an early large gradient from throwing the canvas off.
    fit_rows(task, model, engine_config(cfg, Path(cfg.out_dir), cfg.epochs, cfg.minutes, "generate aligndraw",
                                        grad_clip=1.0), info, device, resume, progress)
    model.attach_clip(clip)
    return model
