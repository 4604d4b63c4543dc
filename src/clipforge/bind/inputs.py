"""What a modality's files become before its encoder: a WAV file -> a normalised log-mel
spectrogram [n_mels, frames]; a depth map (16-bit PNG, millimetres) -> normalised disparity
[1, size, size]. A file that cannot be used raises :class:`ModalityReadError` naming it; what was
adjusted on the way (resampled, mixed to mono, clipped, cut, resized, 8-bit) is returned as notes
for the caller to count."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from clipforge.audio.mel import LOG_CENTRE, LOG_SCALE, LogMel, LogMelConfig
from clipforge.errors import ClipforgeError

Kind = Literal["speech", "depth"]
KINDS: tuple[str, ...] = ("speech", "depth")


class ModalityReadError(ClipforgeError):
    """A speech or depth file cannot be used; ``reason`` says why in a few words (the count's key)."""

    def __init__(self, message: str, reason: str = "unreadable file") -> None:
        super().__init__(message)
        self.reason = reason


Source = str | os.PathLike | bytes  # a path, or the file's bytes (an upload)


def _label(source: Source, name: str | None) -> str:
    return name or (f"<{len(source)} bytes>" if isinstance(source, bytes) else str(source))


@dataclass(frozen=True)
class DepthInputConfig:
    size: int = 64  # maps of another size are resized to this


@dataclass(frozen=True)
class InputConfig:
    """``kind`` picks the reader; the other fields are that reader's settings."""

    kind: Kind = "speech"
    speech: dict[str, Any] = field(default_factory=dict)  # LogMelConfig fields
    depth: dict[str, Any] = field(default_factory=dict)  # DepthInputConfig fields


class SpeechInput:
    def __init__(self, config: LogMelConfig | None = None) -> None:
        self.config = config or LogMelConfig()
        self.mel = LogMel(self.config)

    def __call__(self, source: Source, name: str | None = None) -> tuple[torch.Tensor, list[str]]:
        from clipforge.audio.wav import AudioReadError, read_wav

        try:
            audio = read_wav(source, self.config.sample_rate, self.config.max_seconds, name=name)
        except AudioReadError as e:
            raise ModalityReadError(str(e), e.reason) from None
        with torch.no_grad():
            return (self.mel(torch.from_numpy(audio.samples)) - LOG_CENTRE) / LOG_SCALE, audio.notes


class DepthInput:
    def __init__(self, config: DepthInputConfig | None = None) -> None:
        self.config = config or DepthInputConfig()

    def __call__(self, source: Source, name: str | None = None) -> tuple[torch.Tensor, list[str]]:
        import io

        from PIL import Image, UnidentifiedImageError

        path = _label(source, name)
        notes = []
        try:
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
                img.load()
                mode = img.mode
                if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                    arr = np.asarray(img, dtype=np.float64)
                elif mode in ("L", "F"):
                    arr = np.asarray(img, dtype=np.float64)
                    notes.append(f"{mode} mode (read as relative depth)")
                else:
                    raise ModalityReadError(f"{path}: a {mode} image, not a single-channel depth map "
                                            "(16-bit PNG in millimetres)", "wrong image mode")
        except (FileNotFoundError, IsADirectoryError):
            raise ModalityReadError(f"{path}: no such depth map", "missing file") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise ModalityReadError(f"{path}: not a readable image ({str(e).splitlines()[0][:80]})") from None
        if arr.size == 0 or not np.isfinite(arr).all():
            raise ModalityReadError(f"{path}: empty or non-finite depth map", "empty")
        valid = arr > 0  # 0 is "no reading" in depth sensors' PNGs
        if not valid.any():
            raise ModalityReadError(f"{path}: no valid depth (every pixel 0)", "no valid depth")
        disparity = np.where(valid, 1.0 / np.where(valid, arr, 1.0), 0.0)
        lo, hi = disparity[valid].min(), disparity[valid].max()
        x = torch.from_numpy(((disparity - lo) / max(hi - lo, 1e-12)).astype(np.float32))[None]
        if x.shape[1:] != (self.config.size, self.config.size):
            notes.append(f"resized from {x.shape[2]}x{x.shape[1]}")
            x = torch.nn.functional.interpolate(x[None], size=(self.config.size,) * 2, mode="bilinear",
                                                align_corners=False, antialias=True)[0]
        return (x - 0.5) / 0.25, notes


def build_input(config: InputConfig) -> SpeechInput | DepthInput:
    if config.kind == "speech":
        return SpeechInput(LogMelConfig(**config.speech))
    return DepthInput(DepthInputConfig(**config.depth))
