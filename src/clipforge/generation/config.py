"""Configuration of ``clipforge generate train`` (see :mod:`clipforge.config` for loading and overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from clipforge.config import TaskOptions, opt
from clipforge.engine.budget import MINUTES_HELP
from clipforge.engine.loop import Precision, Schedule
from clipforge.errors import ConfigError

Method = Literal["ddpm", "unclip", "gan", "gan-cls", "gan-int", "gan-int-cls", "controlgan"]
GAN_METHODS = ("gan", "gan-cls", "gan-int", "gan-int-cls", "controlgan")


@dataclass
class UNetOptions:
    channels: list[int] = opt([32, 64, 64], "channels per resolution (each level halves the side)")
    layers_per_block: int = opt(1, "residual blocks per resolution")
    attention_levels: list[int] = opt([1, 2], "resolutions (indices into channels) with self-attention")
    norm_groups: int = opt(8, "GroupNorm groups")
    head_dim: int = opt(32, "attention head width")


@dataclass
class ScheduleOptions:
    timesteps: int = opt(1000, "diffusion steps T (DDPM: 1000)")
    kind: Literal["linear", "cosine"] = opt("linear", "beta schedule: linear 1e-4..0.02 (DDPM) or cosine (Nichol & "
                                                      "Dhariwal)")
    beta_start: float = opt(1e-4, "linear schedule: first beta")
    beta_end: float = opt(0.02, "linear schedule: last beta")
    prediction: Literal["epsilon", "v"] = opt("v", "what the UNet predicts: v (Salimans & Ho's velocity; its early "
                                                   "x0 guesses stay images on short budgets) or epsilon (the "
                                                   "noise, as in DDPM)")
    snr_gamma: float = opt(5.0, "min-SNR-gamma loss weighting (Hang et al. 2023, their gamma = 5); 0: off (the plain "
                                "MSE, DDPM's L_simple)")


@dataclass
class PriorOptions:
    width: int = opt(256, "unclip: the prior's hidden width")
    layers: int = opt(4, "unclip: the prior's residual MLP blocks")
    timesteps: int = opt(1000, "unclip: the prior's diffusion steps")
    epochs_share: float = opt(0.25, "unclip: share of the budget (epochs or minutes) the prior trains for")


@dataclass
class GANOptions:
    z_dim: int = opt(100, "gan: the noise z's width (Reed et al.: 100)")
    text_dim: int = opt(128, "gan: the width phi(t) compresses the CLIP text embedding to (Reed et al.: 128)")
    channels: int = opt(64, "gan: the generator's last and the discriminator's first conv width (DCGAN: 64)")
    interpolation: float = opt(0.5, "gan-int*: beta of the interpolated text embeddings beta*t1 + (1-beta)*t2")
    beta1: float = opt(0.5, "gan: Adam's beta1 for both networks (DCGAN: 0.5)")
    style_share: float = opt(0.1, "gan: share of the budget spent afterwards training the style encoder S "
                                   "(0: none)")


@dataclass
class ControlGANOptions:
    base_size: int = opt(16, "controlgan: the first stage's side; each later stage doubles it up to image_size")
    channels: int = opt(32, "controlgan: the generator's width at every stage (AttnGAN: 32)")
    disc_channels: int = opt(32, "controlgan: the discriminators' first width")
    cond_dim: int = opt(100, "controlgan: the conditioning augmentation's width (AttnGAN: 100)")
    word: float = opt(1.0, "controlgan: weight of the word-level discriminator's terms")
    perceptual: float = opt(1.0, "controlgan: weight of the perceptual loss (the CLIP image tower's middle features)")
    cosine: float = opt(1.0, "controlgan: weight of the text-image cosine loss (1 - CLIP cosine)")
    kl: float = opt(1.0, "controlgan: weight of the conditioning augmentation's KL term")


@dataclass
class GenerationTrainConfig(TaskOptions):
    method: Method = opt("ddpm", "ddpm (a UNet conditioned on the caption's CLIP text embedding), unclip (a "
                                 "decoder conditioned on the CLIP image embedding, and a prior mapping text "
                                 "embeddings to image embeddings), or a text-conditional GAN (Reed et al. 2016): "
                                 "gan (the discriminator sees real/right-text and fake pairs), gan-cls (also "
                                 "real/wrong-text pairs: matching-aware), gan-int (interpolated text "
                                 "embeddings for the generator), gan-int-cls (both); controlgan (Li et al. 2019: "
                                 "multi-stage, word-level attention and discriminator, perceptual and text-image "
                                 "losses)")
    clip: str = opt("", "the CLIP whose embeddings condition the model (any model clipforge.load reads; frozen)")
    data: str = opt("", "training pairs: a CSV image,caption or a captioned folder")
    image_column: str = opt("image", "CSV column of image paths")
    caption_column: str = opt("caption", "CSV column of captions")
    image_size: int = opt(32, "side of the generated images (the training images are resized and centre-cropped)")
    cond_drop: float = opt(0.1, "probability the condition is dropped in training (classifier-free guidance)")
    unet: UNetOptions = field(default_factory=UNetOptions)
    schedule: ScheduleOptions = field(default_factory=ScheduleOptions)
    prior: PriorOptions = field(default_factory=PriorOptions)
    gan: GANOptions = field(default_factory=GANOptions)
    controlgan: ControlGANOptions = field(default_factory=ControlGANOptions)
    epochs: int = opt(20, "passes over the training pairs")
    minutes: float | None = opt(None, MINUTES_HELP)
    max_steps: int | None = opt(None, "stop after this many steps in total (the schedule still follows epochs)")
    batch_size: int = opt(64, "images per step")
    micro_batch_size: int | None = opt(None, "split each step into micro-batches of this many images")
    lr: float | None = opt(None, "peak learning rate (default: 5e-4 for diffusion, what docs/benchmarks.md "
                                 "measured at batch 64; 2e-4 for GANs, as DCGAN and Reed et al.)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    warmup_steps: int = opt(100, "linear warm-up steps")
    schedule_lr: Schedule = opt("cosine", "'cosine' or 'constant' learning rate after warm-up")
    ema: float = opt(0.999, "decay of the exponential moving average of the weights that is saved (0: none)")
    precision: Precision = opt("fp32", "fp32, bf16 (autocast) or fp16 (CUDA only)")
    out_dir: str = opt("runs/generator", "run folder; the generator is saved to OUT_DIR/model")
    seed: int = opt(0, "random seed")
    log_every_steps: int = opt(20, "steps between log lines")
    save_every_minutes: float = opt(10.0, "checkpoint when this many minutes passed since the last one")
    tensorboard: bool = opt(True, "write TensorBoard logs")
    device: str = opt("", "cpu, cuda, cuda:N (default: CUDA when present)")

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "image_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.minutes is not None and self.minutes <= 0:
            raise ConfigError(f"minutes must be positive, got {self.minutes}")
        if not 0 <= self.ema < 1:
            raise ConfigError(f"ema must be in [0, 1), got {self.ema}")
        if self.schedule.snr_gamma < 0:
            raise ConfigError(f"schedule.snr_gamma must be at least 0, got {self.schedule.snr_gamma}")
        if not 0 <= self.gan.interpolation <= 1:
            raise ConfigError(f"gan.interpolation must be in [0, 1], got {self.gan.interpolation}")
        if not 0 <= self.gan.style_share < 1:
            raise ConfigError(f"gan.style_share must be in [0, 1), got {self.gan.style_share}")
        if self.method in GAN_METHODS and self.micro_batch_size:
            raise ConfigError("micro_batch_size: a GAN's steps are not split (its BatchNorm sees the whole batch); "
                              "lower batch_size instead")
        if not 0 < self.prior.epochs_share < 1:
            raise ConfigError(f"prior.epochs_share must be in (0, 1), got {self.prior.epochs_share}")

    @property
    def peak_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 2e-4 if self.method in GAN_METHODS else 5e-4

    @property
    def matching_aware(self) -> bool:
        """GAN-CLS: the discriminator also sees real images with another caption's text."""
        return self.method in ("gan-cls", "gan-int-cls")

    @property
    def interpolates(self) -> bool:
        """GAN-INT: the generator also draws interpolated captions."""
        return self.method in ("gan-int", "gan-int-cls")
