"""Training ControlGAN (:mod:`clipforge.generation.controlgan`) as a two-optimiser task of the engine.

Discriminators (one optimiser for all stages), per stage k with the real image resized to its side:
unconditional real -> 1 and fake -> 0; sentence-conditional real/right -> 1 and, weighted 1/2
each, real/wrong caption -> 0 and fake/right -> 0 (matching-aware, as GAN-CLS); the last stage's
word-level logit with the same three pairs. Generator: every stage's unconditional, conditional
and (last stage) word-level logits -> 1, plus ``perceptual`` x the perceptual loss, ``cosine`` x
(1 - CLIP cosine of the last image and its caption) and ``kl`` x the conditioning augmentation's
KL to N(0, I). The CLIP is frozen; its gradients reach the generator only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from clipforge.engine import distributed as D
from clipforge.errors import ConfigError
from clipforge.generation.config import GenerationTrainConfig
from clipforge.generation.controlgan import ControlGAN, ControlGANConfig, text_condition
from clipforge.generation.gan_train import adam_pair, step_noise, wrong_texts
from clipforge.generation.rows_task import RowsTask, engine_config, fit_rows


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def clip_input(clip: Any, images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] as the CLIP's preprocessing would give them (bicubic to its side, normalised)."""
    pre = clip.preprocess
    x = (images.float() + 1) / 2
    if x.shape[-1] != pre.image_size:
        x = F.interpolate(x, size=(pre.image_size,) * 2, mode="bicubic", align_corners=False,
                          antialias=x.shape[-1] > pre.image_size).clamp(0, 1)
    mean = torch.tensor(pre.mean, device=x.device)[:, None, None]
    std = torch.tensor(pre.std, device=x.device)[:, None, None]
    return (x - mean) / std


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over dimensions, averaged over the batch."""
    return (0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)).sum(1).mean()


def discriminator_losses(model: ControlGAN, reals: list[torch.Tensor], fakes: list[torch.Tensor], s: torch.Tensor,
                         words: torch.Tensor, mask: torch.Tensor, word_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """Every stage's discriminator loss on (real, right), (real, wrong caption) and (fake, right)
    pairs (see the module docstring), and the word-level probabilities of real and wrong pairs."""
    wrong = (wrong_texts(s), wrong_texts(words), wrong_texts(mask))
    loss = reals[0].new_zeros(())
    logs: dict[str, torch.Tensor] = {}
    for k, disc in enumerate(model.discriminators):
        r = disc(reals[k], s, words, mask)
        w = disc(reals[k], *wrong)
        f = disc(fakes[k], s, words, mask)
        loss = loss + _bce(r["uncond"], 1) + _bce(f["uncond"], 0) + _bce(r["cond"], 1) + \
            0.5 * (_bce(w["cond"], 0) + _bce(f["cond"], 0))
        if "word" in r:
            loss = loss + word_weight * (_bce(r["word"], 1) + 0.5 * (_bce(w["word"], 0) + _bce(f["word"], 0)))
            logs.update(d_word_real=torch.sigmoid(r["word"].detach()).mean(),
                        d_word_wrong=torch.sigmoid(w["word"].detach()).mean())
    return {"loss": loss, **logs}


def generator_adversarial(model: ControlGAN, fakes: list[torch.Tensor], s: torch.Tensor, words: torch.Tensor,
                          mask: torch.Tensor, word_weight: float = 1.0) -> torch.Tensor:
    """Every stage's unconditional, conditional and (last stage) word-level logits of the generated
    images pushed to "real"."""
    loss = fakes[0].new_zeros(())
    for k, disc in enumerate(model.discriminators):
        f = disc(fakes[k], s, words, mask)
        loss = loss + _bce(f["uncond"], 1) + _bce(f["cond"], 1)
        if "word" in f:
            loss = loss + word_weight * _bce(f["word"], 1)
    return loss


class ControlGANTask(RowsTask):
    manual_optimization = True
    min_batch = 2

    def __init__(self, model: ControlGAN, clip: Any, rows: dict[str, torch.Tensor], cfg: GenerationTrainConfig,
                 info: D.DistInfo, device: torch.device, ema: float) -> None:
        self.clip = clip
        super().__init__(model, rows, cfg, info, device, ema)

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return adam_pair(self.model.generator, self.model.discriminators, self.cfg)

    def training_step(self, batch: dict[str, torch.Tensor], ctx: Any) -> dict[str, Any]:
        model, o = self.model, self.cfg.controlgan
        real = batch["images"].float() / 127.5 - 1
        s, words, mask = batch["cond"].float(), batch["words"].float(), batch["mask"]
        n = len(real)
        z = step_noise(n, model.config.z_dim, self.cfg.seed, ctx.step, self.info.rank, 0, self.device)
        eps = step_noise(n, model.config.cond_dim, self.cfg.seed, ctx.step, self.info.rank, 1, self.device)
        sides = model.config.sides
        reals = [real if side == real.shape[-1] else F.interpolate(real, size=(side, side), mode="area")
                 for side in sides]
        with ctx.autocast():
            out = model.generator(z, s, words, mask, eps)
            d = discriminator_losses(model, reals, [x.detach() for x in out["images"]], s, words, mask, o.word)
        ctx.optimizer_step("discriminator", d["loss"], model.discriminators)
        with ctx.autocast():
            model.discriminators.requires_grad_(False)
            adv = generator_adversarial(model, out["images"], s, words, mask, o.word)
            last = out["images"][-1]
            fake_in, real_in = clip_input(self.clip, last), clip_input(self.clip, real)
            perceptual = F.mse_loss(self.clip.encode_image_middle(fake_in),
                                    self.clip.encode_image_middle(real_in).detach())
            cosine = 1 - (F.normalize(self.clip.encode_image(fake_in), dim=-1) * s).sum(-1).mean()
            kl = kl_to_standard_normal(out["mu"], out["logvar"])
            g_loss = adv + o.perceptual * perceptual + o.cosine * cosine + o.kl * kl
        ctx.optimizer_step("generator", g_loss, model.generator)
        model.discriminators.requires_grad_(True)
        return {"loss": g_loss.detach(), "d_loss": d["loss"].detach(), "adversarial": adv.detach(),
                "perceptual": perceptual.detach(), "cosine": cosine.detach(), "kl": kl.detach(),
                **{k: v for k, v in d.items() if k != "loss"}}


def caption_words(clip: Any, captions: list[str], batch_size: int = 256) -> dict[str, torch.Tensor]:
    """The frozen CLIP's ``sentence``, ``words`` (float16) and ``mask`` for every caption, padded to
    the longest."""
    device = next(clip.parameters()).device
    parts = [text_condition(clip, clip.tokenizer(captions[i: i + batch_size]).to(device))
             for i in range(0, len(captions), batch_size)]
    length = max(p["words"].shape[1] for p in parts)
    words = torch.cat([F.pad(p["words"], (0, 0, 0, length - p["words"].shape[1])).half().cpu() for p in parts])
    mask = torch.cat([F.pad(p["mask"], (0, length - p["mask"].shape[1])).cpu() for p in parts])
    return {"sentence": torch.cat([p["sentence"].cpu() for p in parts]), "words": words, "mask": mask}


def train_controlgan(cfg: GenerationTrainConfig, clip: Any, images: torch.Tensor, captions: list[str], link: dict,
                     info: D.DistInfo, device: torch.device, resume: str | None, progress: bool) -> ControlGAN:
    """Train ControlGAN on uint8 ``images`` and their ``captions``; saved to ``OUT_DIR/model``."""

    if not hasattr(clip.visual, "forward_middle"):
        raise ConfigError("controlgan: the CLIP's image tower has no middle features for the perceptual loss "
                          "(clipforge's ViT and ResNet towers have)")
    clip.requires_grad_(False)
    text = caption_words(clip, captions)
    o = cfg.controlgan
    model = ControlGAN(ControlGANConfig(image_size=cfg.image_size, base_size=o.base_size,
                                        clip_dim=text["sentence"].shape[1], word_dim=text["words"].shape[2],
                                        z_dim=cfg.gan.z_dim, cond_dim=o.cond_dim, channels=o.channels,
                                        disc_channels=o.disc_channels, **link)).to(device)
    D.broadcast_parameters(model, info)
    rows = {"images": images, "cond": text["sentence"], "words": text["words"], "mask": text["mask"],
            "row": torch.arange(len(images))}
    task = ControlGANTask(model, clip, rows, cfg, info, device, cfg.ema)

    fit_rows(task, model, engine_config(cfg, Path(cfg.out_dir), cfg.epochs, cfg.minutes, "generate controlgan"), info,
             device, resume, progress)
    model.attach_clip(clip)
    return model
