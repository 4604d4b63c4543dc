"""The self-supervised training loop: ``train_ssl(config)`` -> a pretrained image encoder.

Same qualities as CLIP training: deterministic data order and augmentation by seed, atomic
checkpoints and exact resume (``resume="latest"``), progress bar, TensorBoard, bf16 autocast and
``torchrun`` (gradients averaged over ranks; SimCLR's NT-Xent sees the global batch). The encoder is
a clipforge image tower, saved as ``out_dir/encoder`` and usable as a CLIP model's image tower
(``clipforge train model.init_image_tower=out_dir/encoder``).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader

from clipforge.errors import CheckpointError, ConfigError
from clipforge.images.preprocess import OPENAI_MEAN, OPENAI_STD
from clipforge.models.config import CLIPConfig, ResNetConfig
from clipforge.models.resnet import ModifiedResNet
from clipforge.models.vit import VisionTransformer
from clipforge.ssl.augment import AugmentConfig, ViewAugment
from clipforge.ssl.config import SSLConfig
from clipforge.ssl.data import ImageTensors, collate_images, labelled_sets, unlabelled_images
from clipforge.ssl.knn import knn_accuracy
from clipforge.ssl.methods import BYOL, SimCLR, SimSiam
from clipforge.training import distributed as D
from clipforge.training.checkpoint import commit_checkpoint, latest_checkpoint
from clipforge.training.optim import learning_rate, param_groups
from clipforge.training.sampler import epoch_batches
from clipforge.utils.progress import progress_bar


@dataclass
class SSLState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    skipped: int = 0
    train_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)


def encoder_config(cfg: SSLConfig) -> CLIPConfig:
    vision = {**cfg.encoder, "image_size": cfg.image_size}
    return CLIPConfig.from_dict({"embed_dim": cfg.embed_dim, "vision": vision, "activation": "gelu"})


def build_encoder(config: CLIPConfig) -> nn.Module:
    if isinstance(config.vision, ResNetConfig):
        return ModifiedResNet(config.vision, config.embed_dim)
    return VisionTransformer(config.vision, config.embed_dim, config.activation)


def build_method(cfg: SSLConfig, encoder: nn.Module) -> nn.Module:
    d = cfg.embed_dim
    if cfg.method == "simclr":
        return SimCLR(encoder, d, cfg.temperature, cfg.proj_hidden or 2048, cfg.proj_out or 128)
    if cfg.method == "byol":
        return BYOL(encoder, d, cfg.proj_hidden or 4096, cfg.proj_out or 256, cfg.tau_base)
    return SimSiam(encoder, d, cfg.proj_out or 2048, cfg.proj_hidden or 512)


def save_encoder(encoder: nn.Module, config: CLIPConfig, out: Path) -> Path:
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(tmp / "encoder.safetensors"))
    (tmp / "encoder.json").write_text(json.dumps({"embed_dim": config.embed_dim,
                                                  "vision": config.to_dict()["vision"]}, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def load_encoder_into(visual: nn.Module, config: CLIPConfig, folder: str | Path) -> None:
    """Copy a saved SSL encoder into a CLIP model's image tower (configs must agree)."""
    folder = Path(folder)
    meta_path = folder / "encoder.json"
    if not meta_path.is_file():
        raise CheckpointError(f"{folder}: not an SSL encoder folder (no encoder.json)")
    meta = json.loads(meta_path.read_text())
    mine = {"embed_dim": config.embed_dim, "vision": config.to_dict()["vision"]}
    if meta != mine:
        raise CheckpointError(f"{folder}: encoder config {meta} differs from the CLIP model's image tower {mine}; "
                              "set model.overrides to match it")
    from clipforge.checkpoints.state_dict import load_strict

    load_strict(visual, load_file(str(folder / "encoder.safetensors")), str(folder))


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def encode(encoder: nn.Module, images: list[str], size: int, batch_size: int = 256) -> tuple[torch.Tensor, list[int]]:
    was_training = encoder.training
    encoder.eval()
    feats, keep = [], []
    loader = DataLoader(ImageTensors(images, size), batch_size=batch_size, collate_fn=lambda b: b)
    i = 0
    for items in loader:
        good = [(j, x) for j, x in enumerate(items, start=i) if x is not None]
        i += len(items)
        if good:
            keep += [j for j, _ in good]
            feats.append(encoder(_normalise(torch.stack([x for _, x in good]).float() / 255)))
    encoder.train(was_training)
    return torch.cat(feats), keep


def evaluate_encoder(encoder: nn.Module, name: str, size: int, seed: int = 0, linear: bool = True) -> dict[str, float]:
    from clipforge.evaluation.linear_probe import linear_probe

    train, test = labelled_sets(name, seed)
    xtr, ktr = encode(encoder, train.images, size)
    xte, kte = encode(encoder, test.images, size)
    ytr = torch.tensor(train.labels)[ktr]
    yte = torch.tensor(test.labels)[kte]
    out = {"knn_acc1": knn_accuracy(xtr, ytr, xte, yte, n_classes=len(train.classes))}
    if linear:
        out["lp_acc1"] = linear_probe(xtr, ytr, xte, yte, n_classes=len(train.classes))["lp_acc1"]
    return out


def train_ssl(cfg: SSLConfig, resume: str | None = None, progress: bool = True) -> tuple[nn.Module, SSLState]:
    info = D.init_distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.precision not in ("fp32", "bf16"):
        raise ConfigError(f"precision must be 'fp32' or 'bf16', got {cfg.precision!r}")
    run = Path(cfg.out_dir)
    images = unlabelled_images(cfg.data)
    dataset = ImageTensors(images, cfg.image_size)
    enc_cfg = encoder_config(cfg)
    torch.manual_seed(cfg.seed)
    method = build_method(cfg, build_encoder(enc_cfg))
    D.broadcast_parameters(method, info)
    optimizer = torch.optim.AdamW(param_groups(method, cfg.weight_decay), lr=cfg.lr)
    a = cfg.augment
    augment = ViewAugment(cfg.image_size, AugmentConfig(tuple(a.crop_scale), flip_p=a.flip_p, jitter_p=a.jitter_p,
                                                        jitter_strength=a.jitter_strength, greyscale_p=a.greyscale_p,
                                                        blur_p=a.blur_p, blur_sigma=tuple(a.blur_sigma)))
    state = SSLState()
    if resume:
        state = _load(run, resume, method, optimizer)
    per_epoch = len(dataset) // cfg.batch_size
    if per_epoch == 0:
        raise ConfigError(f"{cfg.data}: {len(dataset)} images, fewer than batch_size={cfg.batch_size}")
    total = per_epoch * cfg.epochs
    eval_name = cfg.eval_data or (cfg.data if cfg.data in ("synthetic", "digits") else None)
    if info.is_main:
        run.mkdir(parents=True, exist_ok=True)
        cfg.save(run / "ssl_config.json")
    writer = None
    if cfg.tensorboard and info.is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run / "tensorboard"))
        except ImportError:
            writer = None
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    stop = False
    with progress_bar(f"ssl {cfg.method}", total=total, enabled=progress and info.is_main,
                      fields="loss {task.fields[loss]} lr {task.fields[lr]}") as bar:
        bar.update(completed=state.step, loss="-", lr="-")
        while state.epoch < cfg.epochs and not stop:
            batches = epoch_batches(len(dataset), cfg.batch_size, cfg.seed, state.epoch, info.rank, info.world_size,
                                    start=state.batch_in_epoch)
            for x, bad in DataLoader(dataset, batch_sampler=batches, num_workers=cfg.workers,
                                     collate_fn=collate_images):
                t0 = time.perf_counter()
                state.skipped += bad
                x = x.float() / 255
                base = (cfg.seed * 1_000_003 + state.step * 2 + info.rank * 7919) % 2**31
                v1, v2 = _normalise(augment(x, seed=base)), _normalise(augment(x, seed=base + 1))
                lr = learning_rate(state.step, cfg.lr, cfg.warmup_steps, total)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                optimizer.zero_grad(set_to_none=True)
                with autocast:
                    loss = method(v1, v2)
                loss.float().backward()
                _average_gradients(method, info)
                if math.isfinite(loss.item()):
                    optimizer.step()
                if isinstance(method, BYOL):
                    method.update_target(method.momentum(state.step, total))
                state.step += 1
                state.batch_in_epoch += 1
                state.train_seconds += time.perf_counter() - t0
                bar.advance(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}")
                if info.is_main and (state.step % 10 == 0 or state.step == 1):
                    rec = {"step": state.step, "epoch": state.epoch, "loss": loss.item(), "lr": lr}
                    state.history.append(rec)
                    if writer:
                        writer.add_scalar("loss", rec["loss"], state.step)
                if (cfg.max_steps and state.step >= cfg.max_steps) or (
                        cfg.minutes and state.train_seconds >= cfg.minutes * 60):
                    stop = True
                    break
            if not stop:
                state.epoch += 1
                state.batch_in_epoch = 0
            last = stop or state.epoch >= cfg.epochs
            if info.is_main and eval_name and ((cfg.eval_every_epochs and state.epoch % cfg.eval_every_epochs == 0)
                                               or last):
                metrics = evaluate_encoder(method.encoder, eval_name, cfg.image_size,
                                           linear=last and cfg.eval_linear_probe)
                metrics.update(step=state.step, epoch=state.epoch, minutes=state.train_seconds / 60)
                state.evals.append(metrics)
                if writer:
                    for k, v in metrics.items():
                        writer.add_scalar(f"eval/{k}", v, state.step)
                print("eval: " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if isinstance(v, float)),
                      flush=True)
            if info.is_main:
                _save(run, method, optimizer, state, cfg.keep_checkpoints)
            D.barrier(info)
    if info.is_main:
        save_encoder(method.encoder, enc_cfg, run / "encoder")
        if state.skipped:
            print(f"skipped {state.skipped} unreadable image(s)")
    if writer:
        writer.close()
    return method.encoder, state


def _average_gradients(model: nn.Module, info: D.DistInfo) -> None:
    if not info.enabled:
        return
    import torch.distributed as dist

    for p in model.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad.div_(info.world_size)


def _save(run: Path, method: nn.Module, optimizer: torch.optim.Optimizer, state: SSLState, keep: int) -> None:
    def write(tmp: Path) -> None:
        save_file({k: v.contiguous() for k, v in method.state_dict().items()}, str(tmp / "method.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(asdict(state)))

    commit_checkpoint(run / "checkpoints", f"step_{state.step:07d}", write, keep)


def _load(run: Path, which: str, method: nn.Module, optimizer: torch.optim.Optimizer) -> SSLState:
    path = latest_checkpoint(run / "checkpoints", which)
    method.load_state_dict(load_file(str(path / "method.safetensors")))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    return SSLState(**json.loads((path / "state.json").read_text()))
