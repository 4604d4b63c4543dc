"""Configuration of ``clipforge generate train`` (see :mod:`clipforge.config` for loading and overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from clipforge.config import TaskOptions, opt
from clipforge.engine.budget import MINUTES_HELP
from clipforge.engine.loop import Schedule
from clipforge.engine.precision import PRECISION_HELP, Precision
from clipforge.errors import ConfigError

Method = Literal["ddpm", "unclip", "gan", "gan-cls", "gan-int", "gan-int-cls", "controlgan", "aligndraw", "dvae",
                 "vqvae", "dalle", "dalle-mini"]
GAN_METHODS = ("gan", "gan-cls", "gan-int", "gan-int-cls", "controlgan")
TOKENIZER_METHODS = ("dvae", "vqvae")
TRANSFORMER_METHODS = ("dalle", "dalle-mini")


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
class AlignDRAWOptions:
    steps: int = opt(16, "aligndraw: drawing steps T (Mansimov et al.: 32 on COCO)")
    read_size: int = opt(6, "aligndraw: side N of the read glimpse")
    write_size: int = opt(8, "aligndraw: side N of the written patch")
    z_dim: int = opt(32, "aligndraw: the latent Z_t's width")
    hidden: int = opt(256, "aligndraw: the inference and generative LSTMs' width")
    text_hidden: int = opt(128, "aligndraw: each direction of the caption's bidirectional LSTM")
    pixel_std: float = opt(0.3, "aligndraw: the Gaussian likelihood's standard deviation on pixels in [0, 1] "
                                "(docs/benchmarks.md: 0.3 draws far better scenes than 0.1, the caption rather "
                                "than the latent carrying them)")


@dataclass
class ImageTokenizerOptions:
    codebook_size: int = opt(256, "dvae, vqvae: codes K (DALL-E: 8192)")
    downsamples: int = opt(2, "dvae, vqvae: halvings from the image to the token grid (32 px -> 8 x 8)")
    channels: int = opt(64, "dvae, vqvae: convolution width")
    code_dim: int = opt(64, "dvae, vqvae: codebook vectors' width")
    temperature_end: float = opt(1 / 16, "dvae: the Gumbel-softmax temperature after annealing from 1 (DALL-E: "
                                         "1/16)")
    anneal_steps: int = opt(1000, "dvae: steps of the temperature's cosine annealing")
    kl_weight: float = opt(1.0, "dvae: beta on KL(q || uniform), reached linearly over kl_warmup_steps")
    kl_warmup_steps: int = opt(500, "dvae: steps to raise beta from 0")
    commitment: float = opt(0.25, "vqvae: beta of the commitment loss (van den Oord et al.: 0.25)")
    ema_decay: float = opt(0.99, "vqvae: decay of the codebook's moving averages")
    restart_below: float = opt(1.0, "vqvae: restart codes whose moving count falls below this (0: never)")


@dataclass
class TransformerOptions:
    width: int = opt(256, "dalle, dalle-mini: the transformer's width")
    layers: int = opt(4, "dalle: layers; dalle-mini: the decoder's layers")
    encoder_layers: int = opt(2, "dalle-mini: the caption encoder's layers")
    heads: int = opt(4, "dalle, dalle-mini: attention heads")
    attention: Literal["dense", "sparse"] = opt("dense", "dalle: causal attention everywhere (dense) or the paper's "
                                                         "row / column / convolutional masks over the image tokens "
                                                         "(sparse)")
    text_loss_weight: float = opt(0.125, "dalle: weight of the caption's cross-entropy (the image's is 1 minus "
                                         "it; DALL-E: 1/8)")


@dataclass
class GenerationTrainConfig(TaskOptions):
    method: Method = opt("ddpm", "ddpm (a UNet conditioned on the caption's CLIP text embedding), unclip (a "
                                 "decoder conditioned on the CLIP image embedding, and a prior mapping text "
                                 "embeddings to image embeddings), or a text-conditional GAN (Reed et al. 2016): "
                                 "gan (the discriminator sees real/right-text and fake pairs), gan-cls (also "
                                 "real/wrong-text pairs: matching-aware), gan-int (interpolated text "
                                 "embeddings for the generator), gan-int-cls (both); controlgan (Li et al. 2019: "
                                 "multi-stage, word-level attention and discriminator, perceptual and text-image "
                                 "losses); aligndraw (Mansimov et al. 2016: a recurrent VAE drawing on a canvas, "
                                 "attending to the caption's words); dvae or vqvae (an image tokenizer: DALL-E's "
                                 "discrete VAE, or a VQ-VAE); dalle (a decoder-only transformer over caption and "
                                 "image tokens) or dalle-mini (a caption encoder and an image-token decoder), each "
                                 "over a tokenizer trained first (tokenizer=PATH)")
    clip: str = opt("", "the CLIP whose embeddings condition the model (any model clipforge.load reads; frozen); "
                        "aligndraw and the transformers read captions themselves and keep it to re-rank; the "
                        "tokenizers need none")
    tokenizer: str = opt("", "dalle, dalle-mini: the image tokenizer's folder (generate train --method dvae|vqvae)")
    text_vocab: int = opt(512, "aligndraw, dalle, dalle-mini: size of the caption BPE learned from the training "
                               "captions")
    text_length: int = opt(24, "aligndraw, dalle, dalle-mini: caption tokens, start and end included (longer "
                               "captions are cut, with a warning)")
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
    aligndraw: AlignDRAWOptions = field(default_factory=AlignDRAWOptions)
    image_tokenizer: ImageTokenizerOptions = field(default_factory=ImageTokenizerOptions)
    transformer: TransformerOptions = field(default_factory=TransformerOptions)
    epochs: int = opt(20, "passes over the training pairs")
    minutes: float | None = opt(None, MINUTES_HELP)
    max_steps: int | None = opt(None, "stop after this many steps in total (the schedule still follows epochs)")
    batch_size: int = opt(64, "images per step")
    micro_batch_size: int | None = opt(None, "split each step into micro-batches of this many images")
    lr: float | None = opt(None, "peak learning rate (default: 5e-4 for diffusion, what docs/benchmarks.md "
                                 "measured at batch 64, and for the transformers; 2e-4 for GANs, as DCGAN and Reed "
                                 "et al.; 1e-3 for aligndraw and the tokenizers)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    warmup_steps: int = opt(100, "linear warm-up steps")
    schedule_lr: Schedule = opt("cosine", "'cosine' or 'constant' learning rate after warm-up")
    ema: float = opt(0.999, "decay of the exponential moving average of the weights that is saved (0: none)")
    precision: Precision = opt("fp32", PRECISION_HELP)
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
        if self.text_vocab < 260:
            raise ConfigError(f"text_vocab must be at least 260 (256 bytes and the start and end tokens), got "
                              f"{self.text_vocab}")
        if self.text_length < 3:
            raise ConfigError(f"text_length must be at least 3 (start, a token, end), got {self.text_length}")
        if self.method in TRANSFORMER_METHODS and not self.tokenizer:
            raise ConfigError(f"tokenizer: {self.method} models the ids of an image tokenizer; train one first "
                              f"(generate train --method {'dvae' if self.method == 'dalle' else 'vqvae'}) and give "
                              "its folder (tokenizer=PATH)")
        if not 0 <= self.transformer.text_loss_weight < 1:
            raise ConfigError(f"transformer.text_loss_weight must be in [0, 1), got "
                              f"{self.transformer.text_loss_weight}")
        if not 0 < self.prior.epochs_share < 1:
            raise ConfigError(f"prior.epochs_share must be in (0, 1), got {self.prior.epochs_share}")

    @property
    def peak_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        if self.method in GAN_METHODS:
            return 2e-4
        return 1e-3 if self.method in ("aligndraw", *TOKENIZER_METHODS) else 5e-4

    @property
    def matching_aware(self) -> bool:
        """GAN-CLS: the discriminator also sees real images with another caption's text."""
        return self.method in ("gan-cls", "gan-int-cls")

    @property
    def interpolates(self) -> bool:
        """GAN-INT: the generator also draws interpolated captions."""
        return self.method in ("gan-int", "gan-int-cls")
