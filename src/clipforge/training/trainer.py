"""CLIP training: ``train(config)`` from pairs to a saved, evaluated model, a task on the engine."""

from __future__ import annotations

import logging
import math
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clipforge.checkpoints.load import load, model_config
from clipforge.checkpoints.ssl_encoder import load_encoder_into
from clipforge.data.pairs import caption_options, read_pairs
from clipforge.data.shards import count_samples, is_shard_source, iter_captions
from clipforge.engine import distributed as D
from clipforge.engine.accumulate import micro_batching_is_inexact
from clipforge.engine.checkpoint import TrainState, latest_checkpoint
from clipforge.engine.loop import EngineConfig, TrainingDiverged, fit
from clipforge.engine.precision import check_precision
from clipforge.errors import ConfigError
from clipforge.losses.clip import clip_loss
from clipforge.losses.siglip import siglip_loss
from clipforge.losses.tiled import tiled_clip_loss, tiled_siglip_loss
from clipforge.models.bag_of_words import BagOfWords, BagOfWordsConfig
from clipforge.models.clip import CLIP
from clipforge.models.coca import CoCa, CoCaConfig
from clipforge.models.config import CLIPConfig
from clipforge.training.bow_task import BagOfWordsTask
from clipforge.training.coca_task import CoCaTask
from clipforge.training.config import TrainConfig
from clipforge.training.evaluate import check_eval_data
from clipforge.training.task import CLIPTask, LossFn

log = logging.getLogger(__name__)

LOSSES: dict[str, LossFn] = {"clip": clip_loss, "clip_tiled": tiled_clip_loss, "siglip": siglip_loss,
                             "siglip_tiled": tiled_siglip_loss}
SIGMOID_LOSSES = ("siglip", "siglip_tiled")
__all__ = ["LOSSES", "TrainResult", "TrainingDiverged", "build_model", "build_tokenizer", "train"]


@dataclass
class TrainResult:
    model: CLIP
    state: TrainState
    model_dir: Path
    stopped_early: bool


def build_tokenizer(config: TrainConfig, captions: list[str]) -> Any:
    from clipforge.tokenizer import BPETokenizer, HFTokenizer, TrainedBPETokenizer

    ctx = config.model.context_length
    if config.model.text_tower:
        from clipforge.models.hf_text import hf_text_config, resolve_hf_folder

        pad = hf_text_config(config.model.text_tower).pad_token_id
        return HFTokenizer.load(resolve_hf_folder(config.model.text_tower), ctx or 77, pad)
    kind = config.model.tokenizer
    if kind == "openai":
        return BPETokenizer(context_length=ctx or 77)
    if kind == "train":
        return TrainedBPETokenizer.train(captions, vocab_size=config.model.vocab_size, context_length=ctx or 77)
    return TrainedBPETokenizer.load(kind, context_length=ctx or 77)


def build_model(config: TrainConfig, tokenizer: Any) -> CLIP:
    sigmoid = config.loss in SIGMOID_LOSSES
    bag = config.loss == "bag_of_words"
    if config.model.init:
        model = load(config.model.init)
        if sigmoid and not hasattr(model, "logit_bias"):
            raise ConfigError(f"loss={config.loss} needs a model with a logit bias; {config.model.init} has none "
                              "(it was not trained with a sigmoid loss)")
        if bag != isinstance(model, BagOfWords):
            raise ConfigError(f"{config.model.init}: loss=bag_of_words continues only a bag-of-words model" if bag
                              else f"{config.model.init} is a bag-of-words model: train it with loss=bag_of_words")
        vocab = model.config.vocab_size if bag else model.config.text.vocab_size
        if tokenizer is not None and tokenizer.vocab_size > vocab:
            raise ConfigError(f"tokenizer has {tokenizer.vocab_size} tokens but {config.model.init} only {vocab}")
        return model.train()
    base = model_config(config.model.name)
    d = base.to_dict()
    if sigmoid and not isinstance(base, CoCaConfig):  # SigLIP's initialisation: t = 10, b = -10 (Zhai et al. 2023)
        d.update(init_logit_scale=math.log(10.0), init_logit_bias=-10.0)
    for section, values in config.model.overrides.items():
        if isinstance(values, dict) and isinstance(d.get(section), dict):
            d[section].update(values)
        else:
            d[section] = values
    if bag:
        return _build_bag_of_words(config, d, isinstance(base, CoCaConfig), tokenizer)
    if isinstance(base, CoCaConfig):
        return _build_coca(config, d, tokenizer)
    if config.model.text_tower:
        from clipforge.models.hf_text import HFTextTower, hf_text_config

        text_cfg = hf_text_config(config.model.text_tower, config.model.text_pooling, config.model.text_proj,
                                  tokenizer.context_length)
        d["text"] = {**text_cfg.__dict__}
        model = CLIP(CLIPConfig.from_dict(d))
        model.text = HFTextTower(text_cfg, model.config.embed_dim, pretrained=True)
        return model.train()
    d["text"]["vocab_size"] = tokenizer.vocab_size
    d["text"]["context_length"] = tokenizer.context_length
    model = CLIP(CLIPConfig.from_dict(d))
    return model.train()


def _build_coca(config: TrainConfig, d: dict, tokenizer: Any) -> CoCa:
    if config.loss != "clip":
        raise ConfigError(f"loss={config.loss}: a CoCa trains with the CLIP loss plus its captioning loss (loss=clip)")
    if config.model.text_tower:
        raise ConfigError("model.text_tower: a CoCa's text tower is its own (a causal transformer with a CLS token)")
    for section in ("text", "decoder"):  # the tokenizer decides the vocabulary and the positions
        d[section].update(vocab_size=tokenizer.vocab_size, context_length=tokenizer.context_length)
    d.update(start_id=tokenizer.sot_token_id, end_id=tokenizer.eot_token_id)
    return CoCa(CoCaConfig.from_dict(d)).train()


def _build_bag_of_words(config: TrainConfig, d: dict, coca: bool, tokenizer: Any) -> BagOfWords:
    """The named model's image tower (a CLIP's or a CoCa's) with a head over the tokenizer's vocabulary."""
    if config.model.text_tower:
        raise ConfigError("model.text_tower: loss=bag_of_words has no text tower (the image tower predicts the words)")
    sections = ("text", "decoder") if coca else ("text",)
    for section in sections:  # kept consistent with the tokenizer, though the text side is not built
        d[section].update(vocab_size=tokenizer.vocab_size, context_length=tokenizer.context_length)
    ignore = sorted({getattr(tokenizer, "pad_token_id", 0), tokenizer.sot_token_id, tokenizer.eot_token_id})
    cfg = BagOfWordsConfig(tower_arch="coca" if coca else "clip", tower=d, vocab_size=tokenizer.vocab_size,
                           ignore_ids=ignore)
    return BagOfWords(cfg).train()


def train(config: TrainConfig, resume: str | None = None, progress: bool = True,
          loss_fn: LossFn | None = None) -> TrainResult:
    """Train a CLIP model as ``config`` says; ``resume`` is ``"latest"`` or a checkpoint folder.

    ``loss_fn(image_features, text_features, scale)`` replaces the configured loss (``config.loss``).
    """
    config.check()
    info = D.init_distributed()
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    if loss_fn is None and config.loss != "bag_of_words":
        if config.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {config.loss!r}")
        loss_fn = LOSSES[config.loss]
    check_precision(config.precision)
    if not config.data.train:
        raise ConfigError("no training data: set data.train to a CSV/TSV file or a captioned image folder")
    run_dir = Path(config.out_dir)
    if info.is_main:
        _check_writable(run_dir)
        check_eval_data(config)
    device = D.default_device(info)

    shards = is_shard_source(config.data.train)
    if shards:
        pairs, read_skips = [], []
        n_samples = config.data.train_samples or count_samples(config.data.train)
        if not n_samples:
            raise ConfigError(f"{config.data.train}: no shards.json beside the shards to count samples; "
                              "set data.train_samples")
    else:
        pairs, read_skips = read_pairs(config.data.train, config.data.image_column, config.data.caption_column,
                                       config.data.separator)
        n_samples = len(pairs)
    torch.manual_seed(config.seed)
    if resume:
        model = load(latest_checkpoint(run_dir / "checkpoints", resume) / "model").train()
    else:
        split = config.data.caption_split
        captions = lambda: list(iter_captions(config.data.train)) if shards else \
            [c for p in pairs for c in caption_options(p.caption, split)]  # noqa: E731
        if config.model.init:
            model = build_model(config, None)  # fine-tuning keeps the checkpoint's own tokenizer
            if model.tokenizer is None:
                model.tokenizer = build_tokenizer(config, captions())
        else:
            tokenizer = build_tokenizer(config, captions())
            model = build_model(config, tokenizer)
            model.tokenizer = tokenizer
        if config.model.init_image_tower:
            load_encoder_into(model.visual, model.config, config.model.init_image_tower)
    model.to(device)
    if config.model.lock_image:
        model.lock_image_tower()
    if config.model.lock_text:
        if isinstance(model, BagOfWords):
            raise ConfigError("model.lock_text: loss=bag_of_words has no text tower to freeze")
        model.lock_text_tower()
    model.set_grad_checkpointing(config.model.grad_checkpointing)
    D.broadcast_parameters(model, info)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(run_dir / "train_config.json")
        if config.micro_batch_size and config.micro_batch_size < config.batch_size and \
                micro_batching_is_inexact(model):
            log.warning("this model has BatchNorm layers (a ResNet tower): with micro_batch_size="
                  f"{config.micro_batch_size} < batch_size={config.batch_size} they normalise each micro-batch by "
                  "its own statistics, so gradients are not exactly the full batch's (running statistics are "
                  "still updated once per step); use a ViT tower for exact micro-batching")
    if isinstance(model, BagOfWords):
        task: CLIPTask = BagOfWordsTask(model, config, pairs, n_samples, info, device)
    else:
        task = (CoCaTask if isinstance(model, CoCa) else CLIPTask)(model, config, pairs, n_samples, loss_fn, info,
                                                                    device)
    result = fit(task, engine_config(config), info, device, resume=resume, progress=progress,
                 skipped=None if resume else dict(Counter(s.reason for s in read_skips)))
    return TrainResult(model.eval(), result.state, run_dir / "model", result.stopped_early)


def engine_config(config: TrainConfig) -> EngineConfig:
    """The engine's part of a CLIP training config."""
    opt = config.optim
    return EngineConfig(out_dir=config.out_dir, epochs=config.epochs, max_steps=config.max_steps,
                        minutes=config.minutes,
                        warmup_steps=opt.warmup_steps, schedule=opt.schedule, grad_clip=opt.grad_clip,
                        micro_batch_size=config.micro_batch_size, precision=config.precision,
                        attention=config.attention, log_every_steps=config.log_every_steps,
                        save_every_steps=config.save_every_steps,
                        keep_checkpoints=config.keep_checkpoints, eval_every_epochs=config.eval_every_epochs,
                        eval_every_steps=config.eval_every_steps, budget_counts_eval=config.budget_counts_eval,
                        max_nonfinite_steps=config.max_nonfinite_steps, tensorboard=config.tensorboard,
                        label="train")


def _check_writable(run_dir: Path) -> None:
    """Fail before any work if out_dir cannot hold the run's files."""

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ConfigError(f"out_dir={run_dir}: cannot write there ({e.strerror or e})") from None
