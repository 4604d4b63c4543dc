"""Configuration of self-supervised pretraining (``clipforge ssl train``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from clipforge.config import TaskOptions, opt
from clipforge.engine.budget import MINUTES_HELP
from clipforge.engine.precision import PRECISION_HELP, Precision
from clipforge.errors import ConfigError

Method = Literal["simclr", "byol", "simsiam"]
METHODS: tuple[str, ...] = get_args(Method)
Optimizer = Literal["adamw", "lars"]


@dataclass
class SSLAugment:
    crop_scale: list[float] = opt([0.08, 1.0], "random resized crop area range (SimCLR: 0.08-1)")
    flip_p: float = opt(0.5, "horizontal flip probability")
    jitter_p: float = opt(0.8, "colour jitter probability (SimCLR: 0.8)")
    jitter_strength: float = opt(1.0, "colour jitter strength s (brightness/contrast/saturation 0.8 s, hue 0.2 s)")
    greyscale_p: float = opt(0.2, "random greyscale probability (SimCLR: 0.2)")
    blur_p: float = opt(0.5, "Gaussian blur probability (SimCLR: 0.5 on ImageNet; its CIFAR runs leave blur out: "
                             "set 0 to do the same)")
    blur_sigma: list[float] = opt([0.1, 2.0], "Gaussian blur sigma range")
    blur_kernel: float = opt(0.1, "Gaussian blur kernel side as a fraction of the image side (SimCLR: 0.1; at "
                                  "least 3 pixels, odd)")
    small_crops: int = opt(0, "multi-crop (SwAV): this many extra low-resolution views per image, each a "
                              "positive of both global views (0: the papers' two views); ResNet encoders")
    small_crop_size: int = opt(16, "side of the small views in pixels")
    small_crop_scale: list[float] = opt([0.08, 0.25], "area range of the small views' crops")


@dataclass
class SSLConfig(TaskOptions):
    method: Method = opt("simclr", "simclr, byol or simsiam")
    data: str = opt("synthetic", "unlabelled images: a folder (searched recursively), webdataset shards, or a "
                    "built-in name, which means its training split (digits = digits:train, 1,257 images; "
                    "synthetic = the demo scenes' training images; objects = those scenes' objects cut out at their "
                    "grid cells)")
    eval_data: str | None = opt(None, "labelled data for kNN and linear-probe accuracy: a built-in name; the "
                                "probes fit on its training split and are scored on its held-out split "
                                "(digits: digits:train / digits:test; synthetic: shape as the label, a 70/30 "
                                "split of the single-object scenes; objects / objects-colour: those objects cut "
                                "out at their cells, by shape / colour); default: data if built-in")
    image_size: int = opt(32, "input side; images are resized (short side) and centre-cropped to it first")
    encoder: dict[str, Any] = opt({"type": "resnet", "layers": [1, 1, 1, 1], "width": 16, "head_width": 16,
                                   "stem": "small"},
                                  "the image tower: a clipforge vision config (resnet with stem small/clip, or vit)")
    embed_dim: int = opt(128, "the encoder's output width (the CLIP embedding width if reused as a CLIP tower)")
    temperature: float = opt(0.5, "SimCLR's NT-Xent temperature tau (0.5 in the paper's CIFAR runs)")
    proj_hidden: int | None = opt(None, "projector hidden width (default: the paper's: 2048 SimCLR, 4096 BYOL, "
                                  "2048 SimSiam)")
    proj_out: int | None = opt(None, "projector output width (default: 128 SimCLR, 256 BYOL, 2048 SimSiam)")
    tau_base: float = opt(0.996, "BYOL's base target momentum")
    augment: SSLAugment = field(default_factory=SSLAugment)
    epochs: int = opt(20, "passes over the data")
    batch_size: int = opt(256, "images per step (2 views each)")
    optimizer: Optimizer = opt("adamw", "adamw, or lars as in the SimCLR paper (SGD with momentum and layer-wise "
                                        "trust ratios; biases and norms left out of decay and adaptation)")
    lr: float | None = opt(None, "peak learning rate (cosine decay after warm-up); default: 1e-3 with adamw, "
                                 "0.075 sqrt(batch_size) with lars (the SimCLR paper's rule for small batches)")
    momentum: float = opt(0.9, "LARS momentum")
    weight_decay: float = opt(1e-6, "weight decay (the SimCLR paper's 1e-6)")
    channels_last: bool = opt(False, "run a ResNet encoder channels-last (faster convolutions on most CPUs and "
                                      "GPUs; the same numbers)")
    warmup_steps: int = opt(50, "linear warm-up steps")
    precision: Precision = opt("fp32", PRECISION_HELP)
    seed: int = opt(0, "seed for initialisation, order and augmentation")
    workers: int = opt(0, "data-loading worker processes")
    out_dir: str = opt("runs/ssl", "folder for checkpoints, logs and the encoder")
    keep_checkpoints: int = opt(2, "how many recent checkpoints to keep")
    save_every_minutes: float = opt(10.0, "checkpoint when this many minutes passed since the last one (and at the "
                                          "end; 0: only at the end unless save_every_steps)")
    save_every_steps: int = opt(0, "also checkpoint every N steps (0: never by steps)")
    eval_every_steps: int = opt(500, "kNN evaluation every N steps (0: none during training); the end always "
                                     "evaluates, with the linear probe")
    eval_every_epochs: int = opt(0, "also evaluate every N epochs (0: not by epochs; large data)")
    eval_linear_probe: bool = opt(True, "add a linear probe to the final evaluation (kNN is always computed)")
    max_steps: int | None = opt(None, "stop after this many steps in total")
    minutes: float | None = opt(None, MINUTES_HELP)
    threads: int | None = opt(None, "torch CPU threads")
    tensorboard: bool = opt(True, "write TensorBoard logs")
    log_every_steps: int = opt(10, "write a metrics line every N steps")
    max_nonfinite_steps: int = opt(5, "stop after this many consecutive NaN/Inf losses (their updates are skipped)")
    grad_clip: float | None = opt(None, "clip the global gradient norm to this (null: no clipping)")
    device: str | None = opt(None, "'cpu', 'cuda', 'cuda:1' ... (default: CUDA when present)")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")

    def peak_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        from clipforge.engine.lars import sqrt_scaled_lr

        return sqrt_scaled_lr(self.batch_size) if self.optimizer == "lars" else 1e-3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)



