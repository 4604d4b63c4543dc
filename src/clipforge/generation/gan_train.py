"""Training the text-conditional GANs (:mod:`clipforge.generation.gan`) as tasks of the engine.

One step is Reed et al.'s Algorithm 1 with the non-saturating generator loss, in BCE form:

- discriminator: real image with its own text -> 1, and, weighted 1/2 each, real image with another
  caption's text -> 0 (``gan-cls``: matching-aware) and generated image with its text -> 0; without
  the wrong-text pairs (``gan``, ``gan-int``) the fake term has weight 1;
- generator: its image with its text -> 1; with interpolation (``gan-int*``) also
  G(z', beta t1 + (1 - beta) t2) -> 1 for t2 another caption of the batch, a condition no real image
  stands behind, which fills the text manifold between captions.

The generator and discriminator have one optimiser each (Adam, beta1 0.5), stepped by hand through
the engine's context (its clipping, precision, non-finite policy and gradient averaging). The noise
is drawn from the run's seed and the step, so a resumed run continues the same sequence. The style
encoder then trains with ||z - S(G(z, t))||^2 against the frozen generator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from clipforge.engine import distributed as D
from clipforge.engine.loop import fit
from clipforge.generation.config import GenerationTrainConfig
from clipforge.generation.gan import GANConfig, TextGAN
from clipforge.generation.rows_task import RowsTask, engine_config, fit_rows, step_generator


def step_noise(n: int, dim: int, seed: int, step: int, rank: int, stream: int,
               device: torch.device) -> torch.Tensor:
    """Noise [n, dim] drawn from the run's seed, the step, the rank and a stream number (so a resumed
    run draws what the uninterrupted one would)."""
    return torch.randn((n, dim), generator=step_generator(seed, step, rank, stream)).to(device)


def adam_pair(generator: torch.nn.Module, discriminator: torch.nn.Module,
              cfg: GenerationTrainConfig) -> dict[str, torch.optim.Optimizer]:
    """A GAN's two Adam optimisers (DCGAN's beta1 = 0.5 by default), named as the task steps them."""
    betas = (cfg.gan.beta1, 0.999)
    return {"generator": torch.optim.Adam(generator.parameters(), lr=cfg.peak_lr, betas=betas),
            "discriminator": torch.optim.Adam(discriminator.parameters(), lr=cfg.peak_lr, betas=betas)}


def wrong_texts(text: torch.Tensor) -> torch.Tensor:
    """Each row paired with the next row's caption embedding (another caption of the batch)."""
    return text.roll(1, dims=0)


def discriminator_loss(model: TextGAN, images: torch.Tensor, text: torch.Tensor, fake: torch.Tensor,
                       matching_aware: bool) -> dict[str, torch.Tensor]:
    """Reed et al.'s L_D in BCE form, and the three pair kinds' logits (for inspection)."""
    d = model.discriminator
    real = d(images, text)
    fake_logit = d(fake.detach(), text)
    loss = F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
    out = {"real": real.detach(), "fake": fake_logit.detach()}
    if matching_aware:
        wrong = d(images, wrong_texts(text))
        loss = loss + 0.5 * (F.binary_cross_entropy_with_logits(wrong, torch.zeros_like(wrong))
                             + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit)))
        out["wrong"] = wrong.detach()
    else:
        loss = loss + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))
    return {"loss": loss, **out}


def generator_loss(model: TextGAN, fake: torch.Tensor, text: torch.Tensor,
                   interpolated: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Non-saturating -log D(G(z, t), t), plus the same on (G(z', t_int), t_int) with interpolation."""
    logit = model.discriminator(fake, text)
    loss = F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))
    if interpolated is not None:
        fake_int, t_int = interpolated
        logit_int = model.discriminator(fake_int, t_int)
        loss = loss + F.binary_cross_entropy_with_logits(logit_int, torch.ones_like(logit_int))
    return loss


class GANTask(RowsTask):
    """GAN-CLS / GAN-INT on (image, caption embedding) rows; the EMA covers the whole model (the
    generator's is what samples)."""

    manual_optimization = True
    min_batch = 2  # a wrong caption needs another row; BatchNorm needs two samples

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return adam_pair(self.model.generator, self.model.discriminator, self.cfg)

    def training_step(self, batch: dict[str, torch.Tensor], ctx: Any) -> dict[str, Any]:
        model = self.model
        images = batch["images"].float() / 127.5 - 1
        text = batch["cond"].float()
        n, zd = len(images), model.config.z_dim
        z = step_noise(n, zd, self.cfg.seed, ctx.step, self.info.rank, 0, self.device)
        with ctx.autocast():
            fake = model.generator(z, text)
            d = discriminator_loss(model, images, text, fake, matching_aware=self.cfg.matching_aware)
        ctx.optimizer_step("discriminator", d["loss"], model.discriminator)
        interpolated = None
        model.discriminator.requires_grad_(False)  # G's step computes no gradients for D
        with ctx.autocast():
            if self.cfg.interpolates:
                beta = self.cfg.gan.interpolation
                t_int = beta * text + (1 - beta) * wrong_texts(text)
                z2 = step_noise(n, zd, self.cfg.seed, ctx.step, self.info.rank, 1, self.device)
                interpolated = (model.generator(z2, t_int), t_int)
            g_loss = generator_loss(model, fake, text, interpolated)
        ctx.optimizer_step("generator", g_loss, model.generator)
        model.discriminator.requires_grad_(True)
        out = {"loss": g_loss.detach(), "d_loss": d["loss"].detach(),
               "d_real": torch.sigmoid(d["real"]).mean(), "d_fake": torch.sigmoid(d["fake"]).mean()}
        if "wrong" in d:
            out["d_wrong"] = torch.sigmoid(d["wrong"]).mean()
        return out


class StyleTask(RowsTask):
    """The style encoder: ||z - S(G(z, t))||^2 for fresh z and the rows' captions, G frozen."""

    def __init__(self, gan: TextGAN, rows: dict[str, torch.Tensor], cfg: GenerationTrainConfig,
                 info: D.DistInfo, device: torch.device) -> None:
        self.gan = gan
        super().__init__(gan.style, rows, cfg, info, device, ema=0.0)

    def training_step(self, batch: dict[str, torch.Tensor], ctx: Any) -> dict[str, Any]:
        text = batch["cond"].float()
        z = step_noise(len(text), self.gan.config.z_dim, self.cfg.seed, ctx.step, self.info.rank, 2, self.device)
        with torch.no_grad():
            images = self.gan.render(z, text)
        with ctx.autocast():
            loss = F.mse_loss(self.model(images).float(), z)
        return {"loss": loss}


def train_gan(cfg: GenerationTrainConfig, clip: Any, images: torch.Tensor, text_emb: torch.Tensor, link: dict,
              info: D.DistInfo, device: torch.device, resume: str | None, progress: bool) -> TextGAN:
    """Train the GAN (then its style encoder) on uint8 ``images`` and their captions' ``text_emb``."""
    from clipforge.checkpoints.native import save

    out = Path(cfg.out_dir)
    style_share = cfg.gan.style_share
    model = TextGAN(GANConfig(image_size=cfg.image_size, clip_dim=text_emb.shape[1], z_dim=cfg.gan.z_dim,
                              text_dim=cfg.gan.text_dim, channels=cfg.gan.channels, style_encoder=style_share > 0,
                              **link)).to(device)
    D.broadcast_parameters(model, info)
    rows = {"images": images, "cond": text_emb, "row": torch.arange(len(images))}
    task = GANTask(model, rows, cfg, info, device, cfg.ema)
    if style_share:
        gan_epochs = max(1, round(cfg.epochs * (1 - style_share)))
        gan_minutes = cfg.minutes * (1 - style_share) if cfg.minutes else None
    else:
        gan_epochs, gan_minutes = cfg.epochs, cfg.minutes

    fit_rows(task, model, engine_config(cfg, out, gan_epochs, gan_minutes, f"generate {cfg.method}"), info, device,
             resume, progress)
    if style_share:
        assert model.style is not None
        style_task = StyleTask(model, {"cond": text_emb, "row": torch.arange(len(text_emb))}, cfg, info, device)
        style_task.save_final = lambda run_dir: save(model, out / "model")  # type: ignore[method-assign]
        style_run = out / "style"
        fit(style_task, engine_config(cfg, style_run, max(1, cfg.epochs - gan_epochs),
                                      cfg.minutes * style_share if cfg.minutes else None, "style encoder"),
            info, device, resume=resume if resume and style_run.exists() else None, progress=progress)
    model.attach_clip(clip)
    return model
