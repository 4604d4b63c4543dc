"""``clipforge bind train``: a CLIP (or a bound model) + (image, file) rows -> a bound model
(OUT_DIR/model) with a new modality encoder, on the engine."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from clipforge.bind.config import BindTrainConfig
from clipforge.bind.data import BindRows, read_bind_csv
from clipforge.bind.model import BoundCLIP, BoundConfig, modality_config
from clipforge.bind.task import BindTask
from clipforge.data.pairs import Skipped
from clipforge.engine import distributed as D
from clipforge.engine.loop import EngineConfig, FitResult, fit
from clipforge.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)


def bind_modality(base: Any, modality: str, paired_with: str = "image", encoder: dict | None = None,
                  seed: int = 0) -> BoundCLIP:
    """A bound model with a new, randomly initialised ``modality`` encoder: over ``base``'s CLIP, keeping
    the encoders ``base`` already has when it is a bound model."""
    from clipforge.models.clip import CLIP

    if isinstance(base, BoundCLIP):
        if modality in base.modalities:
            raise ConfigError(f"the model already binds {modality}; give its CLIP (or another out_dir) to bind it "
                              "again")
        clip, existing = base.clip, dict(base.config.modalities)
    elif isinstance(base, CLIP):
        clip, existing = base, {}
    else:
        raise CheckpointError(f"a {type(base).__name__} has no image tower to bind to: give a CLIP "
                              "(clipforge train) or a bound model (clipforge bind train)")
    arch = getattr(clip, "arch", "clip")
    torch.manual_seed(seed)
    new = modality_config(modality, clip.config.embed_dim, paired_with, **(encoder or {}))
    bound = BoundCLIP(BoundConfig(clip_arch=arch, clip=clip.config.to_dict(), modalities={**existing, modality: new}))
    bound.clip.load_state_dict(clip.state_dict())
    bound.tokenizer, bound.preprocess = clip.tokenizer, clip.preprocess
    if isinstance(base, BoundCLIP):
        for name in existing:
            bound.encoders[name].load_state_dict(base.encoders[name].state_dict())
            bound.logit_scales[name].data.copy_(base.logit_scales[name].data)
    bound.lock_clip()  # frozen and in eval mode from here on: its BatchNorm statistics never move
    return bound.eval()


def pair_targets(model: BoundCLIP, rows: BindRows, paired_with: str, progress: bool = True
                 ) -> tuple[list[int], torch.Tensor, list[Skipped]]:
    """The frozen CLIP's unit embeddings of what each row's file is paired with (its image or its
    caption): (rows kept, targets [kept, D], rows skipped)."""
    from clipforge.evaluation.cache import image_features
    from clipforge.evaluation.embed import embed_texts

    if paired_with == "image":
        if not any(rows.images):
            raise ConfigError("pair_with=image needs an image column in the data")
        feats, idx, skipped = image_features(model.clip, rows.images, progress=progress, label="embed images")
        return idx.tolist(), feats, skipped
    keep = [i for i, c in enumerate(rows.captions) if c.strip()]
    if not keep:
        raise ConfigError("pair_with=text needs a caption column with text in the data")
    skipped = [Skipped("empty caption", rows.files[i]) for i in range(len(rows)) if not rows.captions[i].strip()]
    with torch.no_grad():
        return keep, embed_texts(model.clip, [rows.captions[i] for i in keep]), skipped


def train_bind(cfg: BindTrainConfig, resume: str | None = None, progress: bool = True,
               evaluate_fn: Any = None) -> tuple[FitResult, dict[str, int]]:
    """Train; returns the engine's result and the count of files used after an adjustment
    (resampled, resized, ...)."""
    from clipforge.checkpoints.load import load

    info = D.init_distributed()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = D.default_device(info, cfg.device)
    rows = read_bind_csv(cfg.data, cfg.modality, cfg.column)
    model = bind_modality(load(cfg.clip), cfg.modality, cfg.pair_with, cfg.encoder, cfg.seed).to(device)
    keep, targets, skipped = pair_targets(model, rows, cfg.pair_with, progress=progress and info.is_main)
    if len(keep) < cfg.batch_size:
        raise ConfigError(f"{cfg.data}: {len(keep)} usable rows, fewer than batch_size={cfg.batch_size}")
    D.broadcast_parameters(model, info)
    task = BindTask(model, cfg.modality, [rows.files[i] for i in keep], targets, batch_size=cfg.batch_size,
                    lr=cfg.lr, weight_decay=cfg.weight_decay, seed=cfg.seed, workers=cfg.workers, info=info,
                    device=device, evaluate_fn=evaluate_fn, cache_inputs=cfg.cache_inputs)
    if info.is_main:
        log.info(f"binding {cfg.modality} to {cfg.clip}'s space: {len(keep)} ({cfg.modality}, {cfg.pair_with}) pairs "
                 f"from {cfg.data}; the CLIP is frozen")
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        cfg.save(Path(cfg.out_dir) / "bind_config.json")
        if cfg.micro_batch_size and cfg.micro_batch_size < cfg.batch_size:
            log.warning(f"the {cfg.modality} encoder has BatchNorm layers: with micro_batch_size="
                        f"{cfg.micro_batch_size} < batch_size={cfg.batch_size} they normalise each micro-batch by "
                        "its own statistics, so gradients are close to, not exactly, the full batch's (running "
                        "statistics are updated once per step)")
    engine = EngineConfig(out_dir=cfg.out_dir, epochs=cfg.epochs, max_steps=cfg.max_steps, minutes=cfg.minutes,
                          warmup_steps=cfg.warmup_steps, schedule=cfg.schedule, grad_clip=cfg.grad_clip,
                          micro_batch_size=cfg.micro_batch_size, precision=cfg.precision,
                          log_every_steps=cfg.log_every_steps, save_every_steps=cfg.save_every_steps,
                          save_every_minutes=cfg.save_every_minutes, save_each_epoch=False,
                          keep_checkpoints=cfg.keep_checkpoints, eval_every_epochs=cfg.eval_every_epochs,
                          max_nonfinite_steps=cfg.max_nonfinite_steps, tensorboard=cfg.tensorboard,
                          label=f"bind {cfg.modality}")
    counts: dict[str, int] = {}
    for s in [*rows.skipped, *skipped]:
        counts[s.reason] = counts.get(s.reason, 0) + 1
    result = fit(task, engine, info, device, resume=resume, progress=progress, skipped=counts)
    if task.adjusted and info.is_main:
        log.warning(f"{cfg.modality} files used after an adjustment: "
                    + ", ".join(f"{k}: {v}" for k, v in task.adjusted.most_common()))
    return result, dict(task.adjusted)
