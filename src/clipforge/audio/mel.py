"""Log-mel spectrograms in torch, the input of the speech encoder.

The mel scale and filters are HTK's (torchaudio's ``melscale_fbanks`` with ``mel_scale="htk"``,
``norm=None``): mel(f) = 2595 log10(1 + f / 700), triangular filters whose corners are the
neighbouring centres, equally spaced in mel from ``f_min`` to ``f_max``. The power spectrum is a
Hann-windowed STFT without centring; the log is natural, floored at ``1e-6``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def hz_to_mel(f: torch.Tensor | float) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)


def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float, f_max: float) -> torch.Tensor:
    """[n_freqs, n_mels] triangular filters over the STFT's bins (0 .. sample_rate / 2)."""
    freqs = torch.linspace(0, sample_rate / 2, n_freqs, dtype=torch.float64)
    points = mel_to_hz(torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2,
                                      dtype=torch.float64))
    widths = points[1:] - points[:-1]  # [n_mels + 1]
    slopes = points[None, :] - freqs[:, None]  # [n_freqs, n_mels + 2]
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0).float()


@dataclass(frozen=True)
class LogMelConfig:
    """What turns a waveform into the encoder's input; saved with a bound model."""

    sample_rate: int = 16000
    n_fft: int = 400  # 25 ms windows
    hop: int = 320  # 20 ms steps: words last hundreds of ms, and half the frames halve the encoder's cost
    n_mels: int = 40
    f_min: float = 20.0
    f_max: float = 8000.0
    max_seconds: float = 6.0  # clips are padded with silence (or cut) to this length

    @property
    def frames(self) -> int:
        return 1 + (int(self.max_seconds * self.sample_rate) - self.n_fft) // self.hop


LOG_FLOOR = 1e-6


class LogMel(torch.nn.Module):
    """Waveforms [B, samples] (or one [samples]) -> log-mel [B, n_mels, frames] of a fixed length."""

    def __init__(self, config: LogMelConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or LogMelConfig()
        self.register_buffer("window", torch.hann_window(c.n_fft, periodic=True), persistent=False)
        self.register_buffer("filters", mel_filterbank(c.n_fft // 2 + 1, c.n_mels, c.sample_rate, c.f_min, c.f_max),
                             persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        single = waveform.dim() == 1
        x = waveform[None] if single else waveform
        n = int(self.config.max_seconds * self.config.sample_rate)
        x = torch.nn.functional.pad(x[:, :n], (0, max(0, n - x.shape[1])))
        spec = torch.stft(x.float(), self.config.n_fft, self.config.hop, window=self.window, center=False,
                          return_complex=True)
        power = spec.real.square() + spec.imag.square()  # [B, freqs, frames]
        mel = torch.log(torch.clamp(self.filters.T @ power, min=LOG_FLOOR))
        return mel[0] if single else mel


# The log of silence, used to normalise: the encoder sees (log-mel - LOG_CENTRE) / LOG_SCALE, about
# zero-mean, unit-scale on speech.
LOG_CENTRE = math.log(LOG_FLOOR) / 2
LOG_SCALE = -math.log(LOG_FLOOR) / 2
