"""``clipforge caption train``: prefix captioners (ClipCap, CapDec, DeCap) as tasks of the engine.

The CLIP is frozen, so its embeddings are computed once before training (image embeddings for
ClipCap, caption text embeddings for the text-only methods); a step is then the language model's
forward over a batch of (embedding, caption tokens). ``clipcap-frozen`` first trains the language
model on the captions alone (an :class:`LMTask`), then freezes it and trains the mapper.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from clipforge.captioning.config import CaptionTrainConfig
from clipforge.captioning.hf_lm import HFCausalLM
from clipforge.captioning.iterative import IterativeCaptioner, IterativeConfig
from clipforge.captioning.lm import IGNORE, LMConfig, caption_labels
from clipforge.captioning.prefix import PrefixCaptioner, PrefixConfig, capdec_noise, modality_gap
from clipforge.data.sampler import epoch_batches
from clipforge.engine import distributed as D
from clipforge.engine.loop import EngineConfig, fit
from clipforge.engine.schedule import param_groups
from clipforge.engine.task import Task
from clipforge.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class _TokenBatches(Task):
    """Shared by the two tasks: batches of rows of (conditioning, tokens) held in memory. The loss is
    a mean over caption tokens, so micro-batches and ranks are weighted by their tokens
    (:meth:`loss_units`)."""

    def __init__(self, model: torch.nn.Module, cond: torch.Tensor | None, tokens: torch.Tensor, end_id: int,
                 cfg: CaptionTrainConfig, info: D.DistInfo, device: torch.device, params: list) -> None:
        self.model, self.cond, self.tokens, self.cfg, self.info, self.device = model, cond, tokens, cfg, info, device
        self.end_id = end_id
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr)

    def loss_units(self, batch: Any) -> float:
        return float((caption_labels(batch[1], self.end_id) != IGNORE).sum())

    def split(self, batch: Any, size: int) -> list[Any]:
        cond, tokens = batch
        parts = tokens.split(size)
        return list(zip(cond.split(size) if cond is not None else [None] * len(parts), parts))

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"main": self.optimizer}

    def steps_per_epoch(self) -> int:
        return len(self.tokens) // self.cfg.batch_size

    def batches(self, epoch: int, start: int):
        cfg, info = self.cfg, self.info
        for rows in epoch_batches(len(self.tokens), cfg.batch_size, cfg.seed, epoch, info.rank, info.world_size,
                                  start=start):
            idx = torch.as_tensor(rows)
            cond = self.cond[idx].to(self.device) if self.cond is not None else None
            yield cond, self.tokens[idx].to(self.device)

    def batch_len(self, batch: Any) -> int:
        return batch[1].shape[0]

    def skipped(self, batch: Any) -> list:
        return []


class PrefixTask(_TokenBatches):
    """Mapper (+ LM unless frozen) on the captioning loss of (embedding, caption) rows."""

    def training_step(self, batch: Any, ctx: Any) -> dict[str, Any]:
        cond, tokens = batch
        with ctx.autocast():
            out = self.model(cond, tokens, train=True)
        return {"loss": self.model.caption_loss(out["logits"], out["labels"])}

    def save_final(self, run_dir: Path) -> Path:
        return _save(self.model, run_dir)


class LMTask(_TokenBatches):
    """The language model alone on the captions (next-token prediction from the start token)."""

    def training_step(self, batch: Any, ctx: Any) -> dict[str, Any]:
        _, tokens = batch
        lm = self.model
        with ctx.autocast():
            logits = lm(lm.embed(tokens[:, :-1]))
        flat = logits.reshape(-1, logits.shape[-1]).float()
        labels = caption_labels(tokens, self.end_id).reshape(-1)
        return {"loss": torch.nn.functional.cross_entropy(flat, labels, ignore_index=IGNORE)}


def _engine(cfg: CaptionTrainConfig, out_dir: Path, epochs: int, label: str,
            minutes: float | None = None) -> EngineConfig:
    return EngineConfig(out_dir=str(out_dir), epochs=epochs, minutes=minutes, warmup_steps=cfg.warmup_steps,
                        schedule=cfg.schedule, precision=cfg.precision, micro_batch_size=cfg.micro_batch_size,
                        log_every_steps=cfg.log_every_steps,
                        save_every_steps=cfg.save_every_steps, eval_every_epochs=0, tensorboard=cfg.tensorboard,
                        label=label)


def train_captioner(cfg: CaptionTrainConfig, resume: str | None = None,
                    progress: bool = True) -> PrefixCaptioner | IterativeCaptioner:
    """Train the captioner ``cfg`` describes; it is saved to ``OUT_DIR/model`` and returned."""
    from clipforge.checkpoints import load
    from clipforge.data.pairs import read_pairs
    from clipforge.evaluation.cache import model_fingerprint
    from clipforge.evaluation.embed import embed_images, embed_texts
    from clipforge.tokenizer import TrainedBPETokenizer

    if not cfg.clip:
        raise ConfigError("clip: give the CLIP whose embeddings to caption (clip=PATH)")
    if not cfg.data:
        raise ConfigError("data: give the training captions (data=train.csv)")
    info = D.init_distributed()
    device = D.default_device(info, cfg.device or None)
    out = Path(cfg.out_dir)
    clip = load(cfg.clip).to(device)
    pairs, skipped = read_pairs(cfg.data, cfg.image_column, cfg.caption_column)
    pairs = [p for p in pairs if p.caption.strip()]
    if len(pairs) < cfg.batch_size:
        raise DataError(f"{cfg.data}: {len(pairs)} captions, fewer than batch_size={cfg.batch_size}")
    captions = [p.caption for p in pairs]
    if cfg.lm.init and cfg.lm.hf:
        raise ConfigError("lm.init and lm.hf: give one language model, not both")
    if cfg.lm.init:
        base = load(cfg.lm.init)
        tokenizer = base.tokenizer
    elif cfg.lm.hf:
        from clipforge.tokenizer.causal import CausalLMTokenizer

        tokenizer = CausalLMTokenizer.from_folder(cfg.lm.hf, context_length=cfg.lm.context_length)
    else:
        tokenizer = TrainedBPETokenizer.train(captions, vocab_size=cfg.lm.vocab_size,
                                              context_length=cfg.lm.context_length)
    if cfg.method == "iterative":  # the language model alone; CLIP steers it when captioning
        return _train_iterative(cfg, clip, tokenizer, tokenizer(captions), info, device, out, resume, progress)
    # What the mapper reads: image embeddings (ClipCap) or the captions' text embeddings (text-only).
    text_only = cfg.method in ("capdec", "decap")
    choice, noise = "", 0.0
    if text_only:
        cond = embed_texts(clip, captions)
        rows = list(range(len(pairs)))
        if cfg.method == "capdec":
            noise, choice = _capdec_noise(cfg, clip, pairs)
    else:
        cond, idx, bad = embed_images(clip, [p.image for p in pairs], progress=progress and info.is_main,
                                      label="embed images")
        rows = idx.tolist()
        if bad:
            log.warning(f"{len(bad)} unreadable image(s) left out, e.g. {bad[0].source}")
    tokens = tokenizer([captions[i] for i in rows])
    lm, lm_cfg = _language_model(cfg, tokenizer, cfg.prefix_length + tokens.shape[1])
    config = PrefixConfig(method=cfg.method, clip_dim=cond.shape[1], prefix_length=cfg.prefix_length,
                          mapper_layers=cfg.mapper_layers, mapper_heads=cfg.mapper_heads,
                          noise_std=cfg.noise_std if cfg.noise_std is not None else noise, noise_choice=choice,
                          decap_tau=cfg.decap_tau, memory_size=len(set(captions)) if cfg.method == "decap" else 0,
                          lm=lm_cfg, start_id=tokenizer.sot_token_id,
                          end_id=tokenizer.eot_token_id, pad_id=getattr(tokenizer, "pad_token_id", 0),
                          clip_path=str(Path(cfg.clip).resolve()), clip_fingerprint=model_fingerprint(clip))
    torch.manual_seed(cfg.seed)
    model = PrefixCaptioner(config, lm).to(device)
    model.tokenizer = tokenizer
    model.attach_clip(clip)
    if cfg.method == "decap":  # the memory: every distinct training caption's text embedding
        unique = sorted(set(captions))
        model.memory.copy_(torch.nn.functional.normalize(embed_texts(clip, unique), dim=-1))
    D.broadcast_parameters(model, info)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "caption_config.json")
    minutes = cfg.minutes
    if cfg.method == "clipcap-frozen":
        if cfg.lm.hf:
            log.info(f"clipcap-frozen: the language model of {cfg.lm.hf} is used as it is (frozen)")
        else:  # the budget is shared with the language model's pretraining in proportion to the epochs
            share = cfg.lm.pretrain_epochs / (cfg.lm.pretrain_epochs + cfg.epochs)
            _pretrain_lm(cfg, model, tokens, info, device, out, resume, progress,
                         minutes * share if minutes else None)
            minutes = minutes * (1 - share) if minutes else None
        for p in model.lm.parameters():
            p.requires_grad_(False)
    params = param_groups(model, cfg.weight_decay)
    task = PrefixTask(model, cond.cpu(), tokens, config.end_id, cfg, info, device, params)
    fit(task, _engine(cfg, out, cfg.epochs, f"caption {cfg.method}", minutes), info, device, resume=resume,
        progress=progress)
    return model


def _language_model(cfg: CaptionTrainConfig, tokenizer: Any, positions: int) -> tuple[Any, Any]:
    """The language model to decode with and its config: a Hugging Face folder's (pretrained
    weights) or a small one built from ``cfg.lm`` (``None``: the captioner builds it)."""
    if cfg.lm.hf:
        lm = HFCausalLM.from_folder(cfg.lm.hf, positions)
        if lm.vocab_size < tokenizer.vocab_size:
            raise ConfigError(f"lm.hf={cfg.lm.hf}: the tokenizer has {tokenizer.vocab_size} tokens, the model "
                              f"{lm.vocab_size}")
        return lm, lm.config
    return None, LMConfig(vocab_size=tokenizer.vocab_size, context_length=positions, width=cfg.lm.width,
                          layers=cfg.lm.layers, heads=cfg.lm.heads)


def _train_iterative(cfg: CaptionTrainConfig, clip: Any, tokenizer: Any, tokens: torch.Tensor, info: D.DistInfo,
                     device: torch.device, out: Path, resume: str | None, progress: bool) -> IterativeCaptioner:
    from clipforge.evaluation.cache import model_fingerprint

    lm, lm_cfg = _language_model(cfg, tokenizer, tokens.shape[1])
    config = IterativeConfig(lm=lm_cfg, candidates=cfg.candidates, beams=cfg.beams, clip_weight=cfg.clip_weight,
                             search=cfg.search, magic_alpha=cfg.magic_alpha, magic_beta=cfg.magic_beta,
                             start_id=tokenizer.sot_token_id, end_id=tokenizer.eot_token_id,
                             pad_id=getattr(tokenizer, "pad_token_id", 0),
                             clip_dim=clip.config.embed_dim, clip_path=str(Path(cfg.clip).resolve()),
                             clip_fingerprint=model_fingerprint(clip))
    if clip.tokenizer is None:
        raise ConfigError(f"clip={cfg.clip}: the iterative decoder scores texts with the CLIP, which has no tokenizer")
    torch.manual_seed(cfg.seed)
    model = IterativeCaptioner(config, lm).to(device)
    model.tokenizer = tokenizer
    model.attach_clip(clip)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "caption_config.json")
    task = LMTask(model.lm, None, tokens, config.end_id, cfg, info, device, param_groups(model.lm, cfg.weight_decay))
    task.save_final = lambda run_dir: _save(model, run_dir)  # type: ignore[method-assign]
    fit(task, _engine(cfg, out, cfg.epochs, "caption iterative (language model)", cfg.minutes), info, device,
        resume=resume, progress=progress)
    return model


def _save(model: Any, run_dir: Path) -> Path:
    from clipforge.checkpoints.native import save

    return save(model, run_dir / "model")


def _pretrain_lm(cfg: CaptionTrainConfig, model: PrefixCaptioner, tokens: torch.Tensor, info: D.DistInfo,
                 device: torch.device, out: Path, resume: str | None, progress: bool, minutes: float | None) -> None:
    if cfg.lm.init:
        from clipforge.checkpoints import load

        base = load(cfg.lm.init)
        if asdict(base.config.lm) != asdict(model.config.lm):
            raise ConfigError(f"lm.init={cfg.lm.init}: its language model ({asdict(base.config.lm)}) is not the shape "
                              f"this run asks for ({asdict(model.config.lm)})")
        model.lm.load_state_dict(base.lm.state_dict())
        return
    task = LMTask(model.lm, None, tokens, model.config.end_id, cfg, info, device,
                  param_groups(model.lm, cfg.weight_decay))
    fit(task, _engine(cfg, out / "lm", cfg.lm.pretrain_epochs, "language model", minutes), info, device,
        resume=resume if resume and (out / "lm").exists() else None, progress=progress)


def _capdec_noise(cfg: CaptionTrainConfig, clip: Any, pairs: list) -> tuple[float, str]:
    from clipforge.evaluation.embed import embed_images, embed_texts

    sample = pairs[: cfg.gap_pairs]
    images, idx, _ = embed_images(clip, [p.image for p in sample])
    if len(idx) < 10:
        raise DataError(f"{cfg.data}: CapDec measures the modality gap on image-caption pairs, and fewer than 10 of "
                        f"the first {cfg.gap_pairs} rows have a readable image; give noise_std instead")
    texts = embed_texts(clip, [sample[i].caption for i in idx.tolist()])
    gap = modality_gap(images, texts)
    std, why = capdec_noise(gap)
    log.info(f"capdec noise: {why}")
    return std, f"{why}; measured on {len(idx)} pairs of {cfg.data}"
