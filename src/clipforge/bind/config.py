"""Options of ``clipforge bind train``: bind a modality to a trained CLIP's image space."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from clipforge.bind.inputs import KINDS
from clipforge.config import TaskOptions, opt
from clipforge.engine.budget import MINUTES_HELP
from clipforge.engine.loop import Schedule
from clipforge.engine.precision import PRECISION_HELP, Precision
from clipforge.errors import ConfigError

PairWith = Literal["image", "text"]


@dataclass
class BindTrainConfig(TaskOptions):
    modality: str = opt("", "the modality to bind: speech (WAV files) or depth (16-bit PNG depth maps, millimetres)")
    clip: str = opt("", "the CLIP whose space it joins (a clipforge model folder), or a bound model to add the "
                    "modality to (its other encoders are kept)")
    data: str = opt("", "a CSV with an image column and a column of the modality's files (named after the modality "
                    "unless column= says)")
    column: str | None = opt(None, "the modality's column (default: the modality's name)")
    pair_with: PairWith = opt("image", "what the encoder is trained against: image (ImageBind: the image tower's "
                              "embeddings; text is never seen) or text (the captions' embeddings: a supervised "
                              "reference for what image pairing reaches)")
    encoder: dict[str, Any] = opt({}, "the encoder's shape over the defaults, e.g. {widths: [32, 64, 128, 128]}")
    eval_data: list[str] = opt([], "labelled CSVs (label and modality columns, e.g. zeroshot_heldout.csv) whose "
                               "emergent zero-shot accuracy is measured at the end and every eval_every_epochs")
    eval_every_epochs: int = opt(0, "also evaluate every N epochs (0: at the end only)")
    epochs: int = opt(10, "passes over the data")
    batch_size: int = opt(128, "pairs per step (the in-batch negatives)")
    micro_batch_size: int | None = opt(None, "split each step into micro-batches of this size (exact: GradCache)")
    lr: float = opt(1e-3, "AdamW peak learning rate")
    weight_decay: float = opt(0.05, "AdamW weight decay (not on norms, biases and temperatures)")
    warmup_steps: int = opt(50, "linear warm-up steps")
    schedule: Schedule = opt("cosine", "cosine, linear or constant after the warm-up")
    grad_clip: float | None = opt(None, "clip the global gradient norm")
    precision: Precision = opt("fp32", PRECISION_HELP)
    workers: int = opt(0, "data loader processes reading and transforming the files")
    cache_inputs: bool = opt(True, "with workers=0, keep each file's encoder input in memory (float16) after its "
                             "first read, so later epochs skip decoding (24 kB a speech clip, 8 kB a depth map)")
    seed: int = opt(0, "seed for order and initialisation")
    out_dir: str = opt("runs/bind", "folder for checkpoints, logs and the bound model (OUT_DIR/model)")
    minutes: float | None = opt(None, MINUTES_HELP)
    max_steps: int | None = opt(None, "stop after this many steps in total")
    save_every_minutes: float = opt(10.0, "checkpoint when this many minutes passed since the last one")
    save_every_steps: int = opt(0, "also checkpoint every N steps")
    keep_checkpoints: int = opt(2, "how many recent checkpoints to keep")
    log_every_steps: int = opt(10, "a metrics line every N steps")
    threads: int | None = opt(None, "torch CPU threads")
    tensorboard: bool = opt(False, "write TensorBoard logs")
    max_nonfinite_steps: int = opt(5, "stop after this many consecutive NaN/Inf losses")
    device: str | None = opt(None, "'cpu', 'cuda', ... (default: CUDA when present)")

    def __post_init__(self) -> None:
        if self.modality not in KINDS:
            raise ConfigError(f"modality must be one of {', '.join(KINDS)}, got {self.modality!r}")
        if not self.clip:
            raise ConfigError("clip is required: the CLIP model folder whose image space the modality joins")
        if not self.data:
            raise ConfigError("data is required: a CSV with image and modality columns")
        if self.pair_with not in get_args(PairWith):
            raise ConfigError(f"pair_with must be image or text, got {self.pair_with!r}")
        if self.batch_size < 2:
            raise ConfigError(f"batch_size must be at least 2 (a contrastive batch needs a negative), got "
                              f"{self.batch_size}")
