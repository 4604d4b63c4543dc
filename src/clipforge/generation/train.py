"""``clipforge generate train``: diffusion generators as tasks of the engine, and the dispatch to the
other families' training (GANs: :mod:`~clipforge.generation.gan_train` and
:mod:`~clipforge.generation.controlgan_train`; alignDRAW: :mod:`~clipforge.generation.aligndraw_train`;
image tokenizers: :mod:`~clipforge.generation.tokenizer_train`; DALL-E and DALL-E mini:
:mod:`~clipforge.generation.dalle_train`).

The CLIP is frozen, so its embeddings (of the captions for ``ddpm``, of the images for unCLIP's
decoder, both for its prior) are computed once, and the training images are read once into a
uint8 tensor at the model's side. A step is then the denoiser's loss on a batch; the weights'
exponential moving average (what diffusion models sample with) is kept by the task and saved.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from clipforge.engine import distributed as D
from clipforge.engine.loop import fit
from clipforge.errors import ConfigError, DataError
from clipforge.generation.config import GAN_METHODS, TOKENIZER_METHODS, TRANSFORMER_METHODS, GenerationTrainConfig
from clipforge.generation.diffusion import CLIPDiffusion, DiffusionConfig, training_draws
from clipforge.generation.prior import PriorConfig
from clipforge.generation.rows_task import RowsTask, engine_config, fit_rows
from clipforge.generation.schedule import ScheduleConfig
from clipforge.generation.unclip import UnCLIP, UnCLIPConfig
from clipforge.generation.unet import UNetConfig

log = logging.getLogger(__name__)


class DiffusionTask(RowsTask):
    """The denoiser's L_simple on (image, condition) rows."""

    def training_step(self, batch: dict[str, torch.Tensor], ctx: Any) -> dict[str, Any]:
        x0 = batch["images"].to(next(self.model.parameters()).dtype) / 127.5 - 1
        draws = training_draws(len(x0), x0.shape[1:], self.model.schedule.timesteps,
                               self.seeds(batch, ctx.step), self.device)
        with ctx.autocast():
            loss = self.model.loss(x0, batch.get("cond"), draws, snr_gamma=self.cfg.schedule.snr_gamma)
        return {"loss": loss}


class PriorTask(RowsTask):
    """unCLIP's prior on (image embedding, text embedding) rows."""

    def training_step(self, batch: dict[str, torch.Tensor], ctx: Any) -> dict[str, Any]:
        emb = batch["image_emb"]
        draws = training_draws(len(emb), emb.shape[1:], self.model.schedule.timesteps,
                               self.seeds(batch, ctx.step), self.device)
        with ctx.autocast():
            loss = self.model.loss(emb, batch["text_emb"], draws)
        return {"loss": loss}


def read_training_images(paths: list[str], size: int, progress: bool) -> tuple[torch.Tensor, list[int], list]:
    """uint8 [N, 3, size, size] of the readable images, their row indices and the unreadable ones."""
    from torch.utils.data import DataLoader

    from clipforge.data.images import ImageDataset, Uint8Crop, collate_images
    from clipforge.utils.progress import progress_bar

    chunks, keep, bad = [], [], []
    loader = DataLoader(ImageDataset(paths, Uint8Crop(size)), batch_size=256, collate_fn=collate_images)
    with progress_bar("read images", total=len(loader), enabled=progress) as bar:
        for batch in loader:
            bad += batch.skipped
            if len(batch.indices):
                chunks.append(batch.images)
                keep += batch.indices.tolist()
            bar.advance()
    if not chunks:
        raise DataError("no readable training image")
    return torch.cat(chunks), keep, bad


def train_generator(cfg: GenerationTrainConfig, resume: str | None = None, progress: bool = True) -> Any:
    """Train the generator (or image tokenizer) ``cfg`` describes; it is saved to ``OUT_DIR/model``
    and returned."""
    from clipforge.checkpoints import load
    from clipforge.data.pairs import read_pairs
    from clipforge.evaluation.cache import model_fingerprint
    from clipforge.evaluation.embed import embed_images, embed_texts

    tokenizer = cfg.method in TOKENIZER_METHODS
    if not cfg.clip and not tokenizer:
        raise ConfigError("clip: give the CLIP whose embeddings condition the generator (clip=PATH)")
    if not cfg.data:
        raise ConfigError("data: give the training pairs (data=train.csv)")
    info = D.init_distributed()
    device = D.default_device(info, cfg.device or None)
    out = Path(cfg.out_dir)
    pairs, _ = read_pairs(cfg.data, cfg.image_column, cfg.caption_column)
    images, keep, bad = read_training_images([p.image for p in pairs], cfg.image_size, progress and info.is_main)
    if bad:
        log.warning(f"{len(bad)} unreadable image(s) left out, e.g. {bad[0].source}")
    pairs = [pairs[i] for i in keep]
    if len(pairs) < cfg.batch_size:
        raise DataError(f"{cfg.data}: {len(pairs)} readable pairs, fewer than batch_size={cfg.batch_size}")
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "generate_config.json")
    torch.manual_seed(cfg.seed)
    if tokenizer:
        from clipforge.generation.tokenizer_train import train_tokenizer

        return train_tokenizer(cfg, images, info, device, resume, progress)
    clip = load(cfg.clip).to(device).eval()
    link = {"clip_path": str(Path(cfg.clip).resolve()), "clip_fingerprint": model_fingerprint(clip),
            "clip_dim": clip.config.embed_dim}
    captions = [p.caption for p in pairs]
    if cfg.method == "aligndraw":
        from clipforge.generation.aligndraw_train import train_aligndraw

        return train_aligndraw(cfg, clip, images, captions, link, info, device, resume, progress)
    if cfg.method in TRANSFORMER_METHODS:
        from clipforge.generation.dalle_train import train_transformer

        return train_transformer(cfg, clip, images, captions, link, info, device, resume, progress)
    del link["clip_dim"]
    text_emb = embed_texts(clip, captions).cpu()
    unet = UNetConfig(channels=tuple(cfg.unet.channels), layers_per_block=cfg.unet.layers_per_block,
                      attention_levels=tuple(cfg.unet.attention_levels), norm_groups=cfg.unet.norm_groups,
                      head_dim=cfg.unet.head_dim)
    schedule = ScheduleConfig(timesteps=cfg.schedule.timesteps, kind=cfg.schedule.kind,
                              beta_start=cfg.schedule.beta_start, beta_end=cfg.schedule.beta_end,
                              prediction=cfg.schedule.prediction)
    dim = text_emb.shape[1]
    rows = {"images": images, "row": torch.arange(len(pairs))}
    if cfg.method == "controlgan":
        from clipforge.generation.controlgan_train import train_controlgan

        return train_controlgan(cfg, clip, images, [p.caption for p in pairs], link, info, device, resume, progress)
    if cfg.method in GAN_METHODS:
        from clipforge.generation.gan_train import train_gan

        return train_gan(cfg, clip, images, text_emb, link, info, device, resume, progress)
    if cfg.method == "ddpm":
        model: Any = CLIPDiffusion(DiffusionConfig(image_size=cfg.image_size, condition="text", clip_dim=dim,
                                                   cond_drop=cfg.cond_drop, unet=unet, schedule=schedule, **link))
        decoder, cond = model, text_emb
        epochs, minutes = cfg.epochs, cfg.minutes
    else:
        image_emb, idx, _ = embed_images(clip, [p.image for p in pairs], progress=progress and info.is_main,
                                         label="embed images")
        if len(idx) != len(pairs):
            raise DataError(f"{cfg.data}: {len(pairs) - len(idx)} images could be read at {cfg.image_size} px but "
                            "not by the CLIP")
        prior_cfg = PriorConfig(dim=dim, width=cfg.prior.width, layers=cfg.prior.layers, cond_drop=cfg.cond_drop,
                                schedule=ScheduleConfig(timesteps=cfg.prior.timesteps))
        model = UnCLIP(UnCLIPConfig(decoder=DiffusionConfig(image_size=cfg.image_size, condition="image",
                                                            clip_dim=dim, cond_drop=cfg.cond_drop, unet=unet,
                                                            schedule=schedule, **link),
                                    prior=prior_cfg, clip_dim=dim, **link))
        share = cfg.prior.epochs_share
        prior_epochs = max(1, round(cfg.epochs * share))
        model.prior.to(device)
        prior_task = PriorTask(model.prior, {"image_emb": image_emb.cpu(), "text_emb": text_emb,
                                             "row": torch.arange(len(pairs))}, cfg, info, device, cfg.ema)
        fit(prior_task, engine_config(cfg, out / "prior", prior_epochs, cfg.minutes * share if cfg.minutes else None,
                                "unclip prior"), info, device,
            resume=resume if resume and (out / "prior").exists() else None, progress=progress)
        model.prior.load_state_dict(prior_task.final_weights().state_dict())
        decoder, cond = model.decoder, image_emb.cpu()
        epochs = max(1, cfg.epochs - prior_epochs)
        minutes = cfg.minutes * (1 - share) if cfg.minutes else None
    rows["cond"] = cond
    decoder.to(device)
    D.broadcast_parameters(decoder, info)
    task = DiffusionTask(decoder, rows, cfg, info, device, cfg.ema)

    fit_rows(task, model, engine_config(cfg, out, epochs, minutes, f"generate {cfg.method}"), info, device, resume,
             progress)
    model.attach_clip(clip)
    return model
