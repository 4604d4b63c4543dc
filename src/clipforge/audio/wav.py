"""Read a WAV file as mono float32 at the sample rate a model expects, with the problems a real
recording has counted rather than crashing: not a WAV, empty or silent (refused), several channels
(averaged), another sample rate (resampled, polyphase), clipped (kept, flagged), too long (cut)."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from clipforge.errors import ClipforgeError

SILENT_PEAK = 1e-4  # full scale is 1.0: below this the file holds nothing to hear
CLIPPED_SHARE = 0.01  # more samples than this at full scale: the recording was clipped


class AudioReadError(ClipforgeError):
    """A WAV file is missing, not a WAV, empty or silent."""


@dataclass
class Audio:
    """Mono samples in [-1, 1] at ``sample_rate``; ``notes`` say what was adjusted on the way."""

    samples: np.ndarray
    sample_rate: int
    notes: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


def _to_float(data: np.ndarray) -> np.ndarray:
    if data.dtype == np.uint8:  # 8-bit WAV is unsigned
        return (data.astype(np.float32) - 128) / 128
    if np.issubdtype(data.dtype, np.integer):
        return data.astype(np.float32) / float(-np.iinfo(data.dtype).min)
    return data.astype(np.float32)


def read_wav(path: str | os.PathLike, sample_rate: int = 16000, max_seconds: float | None = None) -> Audio:
    """``path`` as mono float32 at ``sample_rate``; raises :class:`AudioReadError` naming the file."""
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    path = Path(path)
    if not path.is_file():
        raise AudioReadError(f"{path}: no such audio file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns about chunks it skips (metadata)
            rate, data = wavfile.read(path)
    except (ValueError, EOFError, OSError) as e:
        raise AudioReadError(f"{path}: not a readable WAV file ({str(e).splitlines()[0][:80]})") from None
    notes = []
    x = _to_float(np.asarray(data))
    if x.ndim == 2:
        x = x.mean(axis=1)
        notes.append("mixed to mono")
    if x.size == 0:
        raise AudioReadError(f"{path}: empty (no samples)")
    peak = float(np.abs(x).max())
    if not np.isfinite(peak):
        raise AudioReadError(f"{path}: samples are not finite")
    if peak < SILENT_PEAK:
        raise AudioReadError(f"{path}: silent (peak {peak:.1e} of full scale)")
    if float((np.abs(x) >= 0.999).mean()) > CLIPPED_SHARE:
        notes.append("clipped")
    if rate != sample_rate:
        ratio = Fraction(sample_rate, int(rate)).limit_denominator(1000)
        x = resample_poly(x, ratio.numerator, ratio.denominator).astype(np.float32)
        notes.append(f"resampled from {rate} Hz")
    if max_seconds is not None and len(x) > max_seconds * sample_rate:
        x = x[: int(max_seconds * sample_rate)]
        notes.append(f"cut at {max_seconds:g} s")
    return Audio(np.ascontiguousarray(x, dtype=np.float32), sample_rate, notes)


def write_wav(path: str | os.PathLike, samples: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM mono, written atomically."""
    from scipy.io import wavfile

    from clipforge.io import atomic_file

    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    with atomic_file(Path(path)) as tmp:
        wavfile.write(tmp, sample_rate, pcm)
