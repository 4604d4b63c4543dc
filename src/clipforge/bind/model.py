"""A CLIP with more modalities bound to its image space (ImageBind, Girdhar et al. 2023).

:class:`BoundCLIP` holds the CLIP (image and text towers, frozen while binding) and one encoder per
bound modality (:class:`~clipforge.models.conv_encoder.ConvEncoder`), each with its own
temperature. It saves as one clipforge folder (arch ``bound_clip``) and loads with
``clipforge.load``: ``encode_image`` / ``encode_text`` are the CLIP's, ``encode_speech`` /
``encode_depth`` (or ``encode(modality, x)``) the new ones, all in the same space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.bind.inputs import KINDS, InputConfig, build_input
from clipforge.config import build_config
from clipforge.errors import ConfigError
from clipforge.models.conv_encoder import ConvEncoder, ConvEncoderConfig


@dataclass(frozen=True)
class ModalityConfig:
    """One bound modality: how its files are read and its encoder's shape. ``paired_with`` is what it
    was trained against (``image``: ImageBind's emergent setting; ``text``: a supervised reference)."""

    input: dict[str, Any] = field(default_factory=dict)  # InputConfig fields
    encoder: dict[str, Any] = field(default_factory=dict)  # ConvEncoderConfig fields
    paired_with: Literal["image", "text"] = "image"

    def input_config(self) -> InputConfig:
        return build_config(InputConfig, dict(self.input), "input.", strict=True)

    def encoder_config(self) -> ConvEncoderConfig:
        return ConvEncoderConfig.from_dict(self.encoder)


@dataclass(frozen=True)
class BoundConfig:
    clip_arch: Literal["clip", "coca"] = "clip"
    clip: dict[str, Any] = field(default_factory=dict)
    modalities: dict[str, ModalityConfig] = field(default_factory=dict)

    def clip_config(self) -> Any:
        from clipforge.checkpoints.native import ARCHS

        return ARCHS[self.clip_arch][0].from_dict(self.clip)

    @property
    def embed_dim(self) -> int:
        return int(self.clip["embed_dim"])

    def to_dict(self) -> dict[str, Any]:
        return {"clip_arch": self.clip_arch, "clip": self.clip,
                "modalities": {k: {"input": v.input, "encoder": v.encoder, "paired_with": v.paired_with}
                               for k, v in self.modalities.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BoundConfig:
        d = dict(d)
        mods = {k: build_config(ModalityConfig, dict(v), f"modalities.{k}.", strict=True)
                for k, v in d.pop("modalities", {}).items()}
        cfg = build_config(cls, d, "", strict=True)
        if cfg.clip_arch not in ("clip", "coca"):
            raise ConfigError(f"clip_arch must be clip or coca, got {cfg.clip_arch!r}")
        return BoundConfig(cfg.clip_arch, cfg.clip, mods)


def modality_config(kind: str, embed_dim: int, paired_with: str = "image", **encoder: Any) -> ModalityConfig:
    """The default reader and encoder of ``kind``: a 1-D CNN over 40 mel bands for speech, a 2-D
    CNN over a 64x64 map for depth."""
    if kind not in KINDS:
        raise ConfigError(f"unknown modality {kind!r}; known: {', '.join(KINDS)}")
    if kind == "speech":
        enc = ConvEncoderConfig(dims=1, in_channels=40, widths=[64, 128, 128, 256], kernel=5, stem_stride=1,
                                embed_dim=embed_dim)
    else:
        enc = ConvEncoderConfig(dims=2, in_channels=1, widths=[32, 64, 128, 256], kernel=3, stem_stride=2,
                                embed_dim=embed_dim)
    enc_d = {**enc.to_dict(), **encoder}
    return ModalityConfig(input={"kind": kind}, encoder=enc_d, paired_with=paired_with)  # type: ignore[arg-type]


class BoundCLIP(nn.Module):
    arch = "bound_clip"

    def __init__(self, config: BoundConfig) -> None:
        super().__init__()
        from clipforge.checkpoints.native import ARCHS

        self.config = config
        self.clip = ARCHS[config.clip_arch][1](config.clip_config())
        self.encoders = nn.ModuleDict({name: ConvEncoder(m.encoder_config()) for name, m in config.modalities.items()})
        # Each modality's own temperature, CLIP's initial 0.07.
        self.logit_scales = nn.ParameterDict({name: nn.Parameter(torch.tensor(math.log(1 / 0.07)))
                                              for name in config.modalities})
        self.inputs = {name: build_input(m.input_config()) for name, m in config.modalities.items()}

    # The CLIP's tokenizer and preprocessing are the bound model's (clipforge.load sets them here).
    @property
    def tokenizer(self) -> Any:
        return self.clip.tokenizer

    @tokenizer.setter
    def tokenizer(self, value: Any) -> None:
        self.clip.tokenizer = value

    @property
    def preprocess(self) -> Any:
        return self.clip.preprocess

    @preprocess.setter
    def preprocess(self, value: Any) -> None:
        self.clip.preprocess = value

    @property
    def modalities(self) -> list[str]:
        return list(self.encoders)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.clip.encode_image(images, normalize=normalize)

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.clip.encode_text(tokens, normalize=normalize)

    def encode(self, modality: str, x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """``x``: a batch as :meth:`read` gives it -> features [N, embed_dim]."""
        if modality in ("image", "text"):
            return getattr(self, f"encode_{modality}")(x, normalize=normalize)
        if modality not in self.encoders:
            raise ConfigError(f"this model has no {modality!r} encoder (it binds: "
                              f"{', '.join(self.modalities) or 'nothing yet'})")
        feats = self.encoders[modality](x)
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_speech(self, x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.encode("speech", x, normalize)

    def encode_depth(self, x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.encode("depth", x, normalize)

    def read(self, modality: str, source: Any, name: str | None = None) -> tuple[torch.Tensor, list[str]]:
        """One file of ``modality`` (a path, or its bytes; ``name`` for messages) as the encoder's
        input, and what was adjusted reading it."""
        if modality not in self.inputs:
            raise ConfigError(f"this model has no {modality!r} encoder (it binds: "
                              f"{', '.join(self.modalities) or 'nothing yet'})")
        return self.inputs[modality](source, name)

    def lock_clip(self) -> None:
        """Freeze the image and text towers, as ImageBind does: only the new encoders learn."""
        for p in self.clip.parameters():
            p.requires_grad_(False)
        self.clip.eval()

    def train(self, mode: bool = True) -> BoundCLIP:
        super().train(mode)
        if not any(p.requires_grad for p in self.clip.parameters()):
            self.clip.eval()  # a frozen CLIP stays in eval mode (no dropout, no BatchNorm updates)
        return self
