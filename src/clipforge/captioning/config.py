"""Configuration of ``clipforge caption train`` (see :mod:`clipforge.config` for loading and overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from clipforge.config import TaskOptions, opt
from clipforge.engine.budget import MINUTES_HELP
from clipforge.engine.loop import Schedule
from clipforge.engine.precision import PRECISION_HELP, Precision
from clipforge.errors import ConfigError

TrainMethod = Literal["clipcap", "clipcap-frozen", "capdec", "decap", "iterative"]


@dataclass
class LMOptions:
    width: int = opt(256, "token width of the language model")
    layers: int = opt(4, "transformer blocks")
    heads: int = opt(4, "attention heads")
    vocab_size: int = opt(1000, "BPE vocabulary learned on the training captions")
    context_length: int = opt(32, "caption tokens, start and end included")
    pretrain_epochs: int = opt(10, "clipcap-frozen: epochs of language modelling on the captions before freezing "
                                   "(iterative: the LM trains for `epochs`)")
    init: str = opt("", "clipcap-frozen: a trained captioner folder whose language model and tokenizer to reuse "
                        "instead of pretraining")
    hf: str = opt("", "a Hugging Face causal LM folder (GPT-2 layout: config.json, safetensors weights, "
                      "tokenizer) to decode with instead of a small LM trained here; it is fine-tuned (clipcap, "
                      "capdec, decap, iterative) or frozen (clipcap-frozen), and its tokenizer is used")


@dataclass
class CaptionTrainConfig(TaskOptions):
    method: TrainMethod = opt("clipcap", "clipcap (MLP mapper, LM fine-tuned), clipcap-frozen (transformer mapper, "
                                         "LM frozen), capdec (text-only, noise), decap (text-only, memory "
                                         "projection), iterative (an LM on the captions, steered by CLIP)")
    clip: str = opt("", "the CLIP whose embeddings are captioned (any model clipforge.load reads; frozen)")
    data: str = opt("", "training captions: a CSV image,caption or a captioned folder (text-only methods read only "
                        "the captions, and the images of the first gap_pairs rows to measure the modality gap)")
    image_column: str = opt("image", "CSV column of image paths")
    caption_column: str = opt("caption", "CSV column of captions")
    prefix_length: int = opt(10, "prefix vectors the mapper makes (ClipCap: 10)")
    mapper_layers: int = opt(4, "clipcap-frozen: transformer mapper blocks")
    mapper_heads: int = opt(4, "clipcap-frozen: transformer mapper heads")
    noise_std: float | None = opt(None, "capdec: noise std (default: chosen from the measured modality gap)")
    gap_pairs: int = opt(500, "capdec: image-caption pairs the modality gap is measured on")
    decap_tau: float = opt(0.01, "decap: temperature of the projection onto the caption memory")
    candidates: int = opt(8, "iterative: next tokens tried per hypothesis")
    beams: int = opt(4, "iterative: hypotheses kept")
    clip_weight: float = opt(4.0, "iterative: weight of the CLIP similarity against the mean token log p")
    search: Literal["rerank", "magic"] = opt("rerank", "iterative: sentence-level CLIP re-ranking in a beam, or "
                                                       "MAGIC's token-level guidance (candidates = its k)")
    magic_alpha: float = opt(0.1, "iterative, magic: weight of the degeneration penalty (paper: 0.1)")
    magic_beta: float = opt(2.0, "iterative, magic: weight of the CLIP guidance (paper: 2.0)")
    lm: LMOptions = field(default_factory=LMOptions)
    epochs: int = opt(10, "passes over the captions")
    minutes: float | None = opt(None, MINUTES_HELP)
    batch_size: int = opt(64, "captions per step")
    micro_batch_size: int | None = opt(None, "split each step into micro-batches of this many captions (same "
                                             "gradients: the loss is weighted by each part's caption tokens)")
    lr: float = opt(2e-4, "peak learning rate (AdamW; ClipCap: 2e-5 with GPT-2, more for a small LM from scratch)")
    weight_decay: float = opt(0.01, "AdamW weight decay")
    warmup_steps: int = opt(100, "linear warm-up steps")
    schedule: Schedule = opt("cosine", "'cosine' or 'constant' after warm-up")
    precision: Precision = opt("fp32", PRECISION_HELP)
    out_dir: str = opt("runs/captioner", "run folder; the captioner is saved to OUT_DIR/model")
    seed: int = opt(0, "random seed")
    log_every_steps: int = opt(20, "steps between log lines")
    save_every_steps: int = opt(0, "checkpoint cadence in steps (0: each epoch)")
    tensorboard: bool = opt(True, "write TensorBoard logs")
    device: str = opt("", "cpu, cuda, cuda:N (default: CUDA when present)")

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "prefix_length", "gap_pairs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ConfigError(f"micro_batch_size must be at least 1, got {self.micro_batch_size}")
        if self.minutes is not None and self.minutes <= 0:
            raise ConfigError(f"minutes must be positive, got {self.minutes}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")



