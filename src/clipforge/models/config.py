"""Model configurations: plain dataclasses that round-trip to JSON.

A CLIP model is fully described by :class:`CLIPConfig`: an image tower (:class:`ViTConfig` or
:class:`ResNetConfig`), a text tower (:class:`TextConfig`), the joint embedding width and the
activation. ``CLIPConfig.from_dict(cfg.to_dict()) == cfg`` holds for every config.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from clipforge.config import build_config
from clipforge.errors import ConfigError

Activation = Literal["gelu", "quick_gelu"]
ACTIVATIONS: tuple[str, ...] = ("gelu", "quick_gelu")


def _check_int(value: Any, key: str, minimum: int = 1) -> None:
    # bool is an int subclass, and "128" must not pass for 128: both would fail later with a traceback.
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")


def _check_number(value: Any, key: str, positive: bool = True) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or (
        positive and value <= 0
    ):
        raise ConfigError(f"{key} must be a {'positive ' if positive else ''}finite number, got {value!r}")


@dataclass(frozen=True)
class ViTConfig:
    """Vision Transformer image tower (Dosovitskiy et al. 2021, as used by CLIP).

    Attributes:
        image_size: input side in pixels (square inputs).
        patch_size: side of a patch; ``image_size`` must be a multiple of it.
        width: token width.
        layers: number of transformer blocks.
        head_width: width of one attention head (heads = width // head_width).
        mlp_ratio: hidden width of the MLP as a multiple of ``width``.
    """

    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    head_width: int = 64
    mlp_ratio: float = 4.0
    type: Literal["vit"] = "vit"

    def __post_init__(self) -> None:
        for key in ("image_size", "patch_size", "width", "layers", "head_width"):
            _check_int(getattr(self, key), f"vision.{key}")
        _check_number(self.mlp_ratio, "vision.mlp_ratio")
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"vision.image_size={self.image_size} is not a multiple of "
                f"vision.patch_size={self.patch_size}"
            )
        if self.width % self.head_width:
            raise ConfigError(
                f"vision.width={self.width} is not a multiple of vision.head_width={self.head_width}"
            )

    @property
    def heads(self) -> int:
        return self.width // self.head_width


@dataclass(frozen=True)
class ResNetConfig:
    """The modified ResNet image tower of the CLIP paper (Radford et al. 2021, section 2.4).

    Attributes:
        image_size: input side in pixels; the tower downsamples by 32.
        layers: number of bottleneck blocks in each of the four stages.
        width: channels of the first stage (the stem ends with this many channels).
        head_width: width of one head of the attention pool (heads = width * 32 // head_width).
        stem: ``"clip"`` (three 3x3 convolutions, stride 2, then a 2x2 average pool: the tower
            downsamples by 32) or ``"small"`` (one 3x3 convolution at stride 1, as ResNets for
            32-64 px inputs use in SimCLR's CIFAR experiments: the tower downsamples by 8).
    """

    image_size: int = 224
    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    width: int = 64
    head_width: int = 64
    stem: Literal["clip", "small"] = "clip"
    type: Literal["resnet"] = "resnet"

    def __post_init__(self) -> None:
        if self.stem not in ("clip", "small"):
            raise ConfigError(f"vision.stem must be 'clip' or 'small', got {self.stem!r}")
        if not isinstance(self.layers, (list, tuple)) or len(self.layers) != 4:
            raise ConfigError(f"vision.layers must list the blocks of 4 stages, got {self.layers!r}")
        for n in self.layers:
            _check_int(n, "vision.layers[i]")
        object.__setattr__(self, "layers", tuple(self.layers))
        for key in ("image_size", "head_width"):
            _check_int(getattr(self, key), f"vision.{key}")
        _check_int(self.width, "vision.width", minimum=2 if self.stem == "clip" else 1)  # the stem halves it
        if (self.width * 32) % self.head_width:
            raise ConfigError(
                f"vision.width * 32 = {self.width * 32} is not a multiple of vision.head_width={self.head_width}"
            )
        if self.image_size % self.downsampling:
            raise ConfigError(f"vision.image_size={self.image_size} is not a multiple of {self.downsampling}")

    @property
    def downsampling(self) -> int:
        return 32 if self.stem == "clip" else 8

    @property
    def heads(self) -> int:
        return self.width * 32 // self.head_width


@dataclass(frozen=True)
class TextConfig:
    """Causal text transformer, pooled at the end-of-text token (the highest token id).

    Attributes:
        context_length: number of token positions.
        vocab_size: size of the token embedding table.
        width: token width.
        heads: attention heads.
        layers: number of transformer blocks.
        mlp_ratio: hidden width of the MLP as a multiple of ``width``.
    """

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0
    type: Literal["transformer"] = "transformer"

    def __post_init__(self) -> None:
        for key in ("context_length", "vocab_size", "width", "heads", "layers"):
            _check_int(getattr(self, key), f"text.{key}")
        _check_number(self.mlp_ratio, "text.mlp_ratio")
        if self.width % self.heads:
            raise ConfigError(f"text.width={self.width} is not a multiple of text.heads={self.heads}")


@dataclass(frozen=True)
class HFTextConfig:
    """A pretrained Hugging Face encoder as the text tower (ConVIRT / LiT style).

    Attributes:
        hf_config: the encoder's ``config.json`` as a dict, so a saved model rebuilds without the
            original folder (``from_pretrained`` is only used when starting training).
        source: where the pretrained weights were read from (informational).
        pooling: ``"mean"`` (over non-padding tokens), ``"max"`` or ``"cls"`` (first token).
        proj: ``"linear"`` or ``"mlp"`` (hidden width (d + embed_dim) / 2, GELU), both without bias.
        context_length: tokens per text.
        pad_token_id: padding id (masked out of attention and pooling).
    """

    hf_config: dict = field(default_factory=dict)
    source: str = ""
    pooling: Literal["mean", "max", "cls"] = "mean"
    proj: Literal["linear", "mlp"] = "mlp"
    context_length: int = 77
    pad_token_id: int = 0
    type: Literal["hf"] = "hf"

    def __post_init__(self) -> None:
        _check_int(self.context_length, "text.context_length")
        _check_int(self.pad_token_id, "text.pad_token_id", minimum=0)
        if not isinstance(self.hf_config, dict) or "model_type" not in self.hf_config:
            raise ConfigError("text.hf_config must be the encoder's config.json as a mapping, with its model_type")
        if self.pooling not in ("mean", "max", "cls"):
            raise ConfigError(f"text.pooling must be 'mean', 'max' or 'cls', got {self.pooling!r}")
        if self.proj not in ("linear", "mlp"):
            raise ConfigError(f"text.proj must be 'linear' or 'mlp', got {self.proj!r}")

    def __hash__(self) -> int:  # hf_config is a dict
        return hash((self.source, self.pooling, self.proj, self.context_length))


VisionConfig = ViTConfig | ResNetConfig


@dataclass(frozen=True)
class CLIPConfig:
    """A whole CLIP model.

    Attributes:
        embed_dim: width of the joint image-text space.
        vision: the image tower.
        text: the text tower.
        activation: ``"quick_gelu"`` (x * sigmoid(1.702 x), OpenAI's models) or ``"gelu"``.
        init_logit_scale: initial log of the inverse temperature, log(1/0.07) as in the paper.
        max_logit_scale: the exponentiated scale is clamped to at most this (100 in the paper).
        init_logit_bias: ``None`` (CLIP's softmax loss) or the initial logit bias of SigLIP's sigmoid
            loss (-10 in the paper); the model then has a learnable ``logit_bias``.
    """

    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=ViTConfig)
    text: TextConfig | HFTextConfig = field(default_factory=TextConfig)
    activation: Activation = "quick_gelu"
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = 100.0
    init_logit_bias: float | None = None

    def __post_init__(self) -> None:
        _check_int(self.embed_dim, "embed_dim")
        if self.init_logit_bias is not None:
            _check_number(self.init_logit_bias, "init_logit_bias", positive=False)
        _check_number(self.init_logit_scale, "init_logit_scale", positive=False)
        _check_number(self.max_logit_scale, "max_logit_scale")
        if not isinstance(self.vision, (ViTConfig, ResNetConfig)):
            raise ConfigError(f"vision must be a ViTConfig or ResNetConfig, got {type(self.vision).__name__}")
        if not isinstance(self.text, (TextConfig, HFTextConfig)):
            raise ConfigError(f"text must be a TextConfig or HFTextConfig, got {type(self.text).__name__}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if isinstance(self.vision, ResNetConfig):
            d["vision"]["layers"] = list(self.vision.layers)
        return d

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CLIPConfig:
        """Keys checked and values typed by :func:`clipforge.config.build_config` (strictly: a
        string is not a number here); the towers are chosen by their ``type``."""
        d = {"vision": {}, "text": {}, **d}
        return build_config(cls, d, "", strict=True)

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> CLIPConfig:
        text = str(path_or_text)
        if not text.lstrip().startswith("{"):
            text = Path(text).read_text()
        return cls.from_dict(json.loads(text))
