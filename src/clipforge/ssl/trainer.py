"""Self-supervised pretraining as a task of the engine: ``train_ssl(config)`` -> a pretrained image encoder.

The engine gives it what CLIP training has: deterministic data order and augmentation by seed,
atomic checkpoints and exact resume (``resume="latest"``), progress bar, JSONL/TensorBoard logs at
``log_every_steps``, one non-finite policy, device placement, bf16 autocast and ``torchrun``
(gradients averaged over ranks; SimCLR's NT-Xent sees the global batch). The encoder is a clipforge
image tower, saved as ``out_dir/encoder`` and usable as a CLIP model's image tower
(``clipforge train model.init_image_tower=out_dir/encoder``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader

from clipforge.checkpoints.ssl_encoder import save_encoder
from clipforge.data.images import ImageDataset, Uint8Crop, collate_images
from clipforge.data.pairs import Skipped
from clipforge.data.sampler import epoch_batches
from clipforge.engine import distributed as D
from clipforge.engine.checkpoint import TrainState
from clipforge.engine.context import StepContext
from clipforge.engine.lars import LARS, lars_groups
from clipforge.engine.loop import EngineConfig, fit
from clipforge.engine.precision import check_precision
from clipforge.engine.schedule import param_groups
from clipforge.engine.task import Task
from clipforge.errors import ConfigError
from clipforge.images.preprocess import OPENAI_MEAN, OPENAI_STD
from clipforge.models.config import CLIPConfig
from clipforge.models.towers import build_image_tower
from clipforge.ssl.augment import AugmentConfig, ViewAugment
from clipforge.ssl.config import SSLAugment, SSLConfig
from clipforge.ssl.data import OBJECTS, labelled_sets, scored_sets, unlabelled_images
from clipforge.ssl.knn import knn_accuracy
from clipforge.ssl.methods import BYOL, SimCLR, SimSiam

log = logging.getLogger(__name__)


def encoder_config(cfg: SSLConfig) -> CLIPConfig:
    vision = {**cfg.encoder, "image_size": cfg.image_size}
    return CLIPConfig.from_dict({"embed_dim": cfg.embed_dim, "vision": vision, "activation": "gelu"})


def build_method(cfg: SSLConfig, encoder: nn.Module) -> nn.Module:
    d = cfg.embed_dim
    if cfg.method == "simclr":
        return SimCLR(encoder, d, cfg.temperature, cfg.proj_hidden or 2048, cfg.proj_out or 128)
    if cfg.method == "byol":
        return BYOL(encoder, d, cfg.proj_hidden or 4096, cfg.proj_out or 256, cfg.tau_base)
    return SimSiam(encoder, d, cfg.proj_out or 2048, cfg.proj_hidden or 512)


def augment_config(a: SSLAugment, crop_scale: list[float]) -> AugmentConfig:
    return AugmentConfig(tuple(crop_scale), flip_p=a.flip_p, jitter_p=a.jitter_p, jitter_strength=a.jitter_strength,
                         greyscale_p=a.greyscale_p, blur_p=a.blur_p, blur_sigma=tuple(a.blur_sigma),
                         blur_kernel_fraction=a.blur_kernel)


def build_optimizer(cfg: SSLConfig, method: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "lars":
        return LARS(lars_groups(method, cfg.weight_decay), lr=cfg.peak_lr(), momentum=cfg.momentum,
                    weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(param_groups(method, cfg.weight_decay), lr=cfg.peak_lr())


def normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(OPENAI_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def encode(encoder: nn.Module, images: list[str], size: int, batch_size: int = 256) -> tuple[torch.Tensor, list[int]]:
    was_training = encoder.training
    encoder.eval()
    feats, keep = [], []
    device = next(encoder.parameters()).device
    for batch in DataLoader(ImageDataset(images, Uint8Crop(size)), batch_size=batch_size, collate_fn=collate_images):
        if len(batch.indices):
            keep += batch.indices.tolist()
            feats.append(encoder(normalise(batch.images.to(device).float() / 255)).cpu())
    encoder.train(was_training)
    return torch.cat(feats), keep


def evaluate_encoder(encoder: nn.Module, name: str, size: int, seed: int = 0, linear: bool = True) -> dict[str, float]:
    from clipforge.evaluation.linear_probe import linear_probe

    train, test = labelled_sets(name, seed)
    xtr, ktr = encode(encoder, train.images, size)
    xte, kte = encode(encoder, test.images, size)
    ytr = torch.tensor(train.labels)[ktr]
    yte = torch.tensor(test.labels)[kte]
    out: dict[str, Any] = {"knn_acc1": knn_accuracy(xtr, ytr, xte, yte, n_classes=len(train.classes))}
    if linear:
        probe = linear_probe(xtr, ytr, xte, yte, n_classes=len(train.classes))
        out.update(lp_acc1=probe["lp_acc1"], lp_converged=probe["converged"])
    out.update(fit_on=train.name, scored_on=test.name)
    return out


class SSLBatch(NamedTuple):
    images: torch.Tensor  # uint8 [N, 3, H, W]
    skipped: list[Skipped]


class SSLTask(Task):
    """Self-supervised pretraining (SimCLR, BYOL, SimSiam) as a task of the engine."""

    evaluate_at_end = True  # the final evaluation adds the linear probe

    def __init__(self, cfg: SSLConfig, method: nn.Module, dataset: ImageDataset, augment: ViewAugment,
                 encoder_cfg: CLIPConfig, info: D.DistInfo, device: torch.device) -> None:
        self.cfg, self.model, self.dataset, self.augment = cfg, method, dataset, augment
        a = cfg.augment
        self.small_augment = ViewAugment(a.small_crop_size, augment_config(a, a.small_crop_scale))
        self.encoder_cfg, self.info, self.device = encoder_cfg, info, device
        self.optimizer = build_optimizer(cfg, method)
        self.eval_name = cfg.eval_data or (cfg.data if cfg.data in ("synthetic", "digits", OBJECTS) else None)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"main": self.optimizer}

    def steps_per_epoch(self) -> int:
        return len(self.dataset) // self.cfg.batch_size

    def batches(self, epoch: int, start: int):
        cfg, info = self.cfg, self.info
        order = epoch_batches(len(self.dataset), cfg.batch_size, cfg.seed, epoch, info.rank, info.world_size,
                              start=start)
        for batch in DataLoader(self.dataset, batch_sampler=order, num_workers=cfg.workers,
                                collate_fn=collate_images):
            yield SSLBatch(batch.images, batch.skipped)

    def batch_len(self, batch: SSLBatch) -> int:
        return batch.images.shape[0]

    def skipped(self, batch: SSLBatch) -> list[Skipped]:
        return batch.skipped

    def training_step(self, batch: SSLBatch, ctx: StepContext) -> dict[str, torch.Tensor]:
        x = batch.images.to(self.device).float() / 255
        base = (self.cfg.seed * 1_000_003 + ctx.step * 2 + self.info.rank * 7919) % 2**31
        fmt = torch.channels_last if self.cfg.channels_last else torch.contiguous_format
        v1, v2 = (normalise(self.augment(x, seed=base + i)).contiguous(memory_format=fmt) for i in (0, 1))
        small = [normalise(self.small_augment(x, seed=(base + 2**30 + 7 * k) % 2**31)).contiguous(memory_format=fmt)
                 for k in range(self.cfg.augment.small_crops)]
        with ctx.autocast():
            loss = self.model(v1, v2, small)
        return {"loss": loss.float()}

    def after_optimizer_step(self, step: int, total_steps: int) -> dict[str, float]:
        if isinstance(self.model, BYOL):
            self.model.update_target(self.model.momentum(step, total_steps))
        return {}

    def evaluate(self, epoch: int, last: bool) -> dict[str, Any]:
        if not self.eval_name:
            return {}
        linear = last and self.cfg.eval_linear_probe
        out: dict[str, Any] = {}
        for prefix, name in scored_sets(self.eval_name).items():
            m = evaluate_encoder(self.model.encoder, name, self.cfg.image_size, linear=linear)
            out.update(m if not prefix else {f"{prefix}{k}": m[k] for k in ("knn_acc1", "lp_acc1") if k in m})
        return out

    def save_state(self, folder: Path) -> None:
        save_file({k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()},
                  str(folder / "method.safetensors"))

    def load_state(self, folder: Path) -> None:
        self.model.load_state_dict(load_file(str(folder / "method.safetensors")))

    def save_final(self, run_dir: Path) -> Path:
        return save_encoder(self.model.encoder, self.encoder_cfg, run_dir / "encoder")


def train_ssl(cfg: SSLConfig, resume: str | None = None, progress: bool = True) -> tuple[nn.Module, TrainState]:
    info = D.init_distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.augment.small_crops and cfg.encoder.get("type", "resnet") != "resnet":
        raise ConfigError("augment.small_crops (multi-crop) needs a resnet encoder, whose attention pool resamples "
                          f"its positional grid to the small views; got encoder.type={cfg.encoder.get('type')!r}")
    if cfg.augment.small_crops < 0:
        raise ConfigError(f"augment.small_crops must be 0 or more, got {cfg.augment.small_crops}")
    check_precision(cfg.precision)
    device = D.default_device(info, cfg.device)
    dataset = ImageDataset(unlabelled_images(cfg.data), Uint8Crop(cfg.image_size))
    if len(dataset) < cfg.batch_size:
        raise ConfigError(f"{cfg.data}: {len(dataset)} images, fewer than batch_size={cfg.batch_size}")
    enc_cfg = encoder_config(cfg)
    torch.manual_seed(cfg.seed)
    method = build_method(cfg, build_image_tower(enc_cfg)).to(device)
    if cfg.channels_last:
        method = method.to(memory_format=torch.channels_last)
    D.broadcast_parameters(method, info)
    augment = ViewAugment(cfg.image_size, augment_config(cfg.augment, cfg.augment.crop_scale))
    task = SSLTask(cfg, method, dataset, augment, enc_cfg, info, device)
    if task.eval_name and info.is_main:
        train_set, test_set = labelled_sets(task.eval_name, 0)
        every = f"kNN every {cfg.eval_every_steps} steps and " if cfg.eval_every_steps else ""
        final = "kNN + linear probe" if cfg.eval_linear_probe else "kNN"
        log.info(f"training on {cfg.data} ({len(dataset)} images); evaluation: {every}{final} at the end, fit on "
                 f"{train_set.name} ({len(train_set.images)} images) and scored on the held-out {test_set.name} "
                 f"({len(test_set.images)})")
    if info.is_main:
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        cfg.save(Path(cfg.out_dir) / "ssl_config.json")
    engine = EngineConfig(out_dir=cfg.out_dir, epochs=cfg.epochs, max_steps=cfg.max_steps, minutes=cfg.minutes,
                          warmup_steps=cfg.warmup_steps, schedule="cosine", grad_clip=cfg.grad_clip,
                          precision=cfg.precision, log_every_steps=cfg.log_every_steps,
                          keep_checkpoints=cfg.keep_checkpoints, eval_every_epochs=cfg.eval_every_epochs,
                          eval_every_steps=cfg.eval_every_steps, save_every_steps=cfg.save_every_steps,
                          save_every_minutes=cfg.save_every_minutes, save_each_epoch=False,
                          max_nonfinite_steps=cfg.max_nonfinite_steps, tensorboard=cfg.tensorboard,
                          label=f"ssl {cfg.method}")
    result = fit(task, engine, info, device, resume=resume, progress=progress)
    return method.encoder, result.state
