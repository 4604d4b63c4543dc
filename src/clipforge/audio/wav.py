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
    """A WAV file is missing, not a WAV, empty or silent; ``reason`` says which, in a few words."""

    def __init__(self, message: str, reason: str = "unreadable file") -> None:
        super().__init__(message)
        self.reason = reason


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


def read_wav(source: str | os.PathLike | bytes, sample_rate: int = 16000, max_seconds: float | None = None,
             name: str | None = None) -> Audio:
    """``source`` (a path, or a file's bytes) as mono float32 at ``sample_rate``; raises
    :class:`AudioReadError` naming the file (``name``, or the path)."""
    import io

    from scipy.io import wavfile

    label = name or (f"<{len(source)} bytes>" if isinstance(source, bytes) else str(source))
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise AudioReadError(f"{label}: no such audio file", "missing file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns about chunks it skips (metadata, a streamed length)
            rate, data = wavfile.read(io.BytesIO(source) if isinstance(source, bytes) else Path(source))
    except (ValueError, EOFError, OSError) as e:
        raise AudioReadError(f"{label}: not a readable WAV file ({str(e).splitlines()[0][:80]})") from None
    notes = []
    x = _to_float(np.asarray(data))
    if x.ndim == 2:
        x = x.mean(axis=1)
        notes.append("mixed to mono")
    if x.size == 0:
        raise AudioReadError(f"{label}: empty (no samples)", "empty")
    peak = float(np.abs(x).max())
    if not np.isfinite(peak):
        raise AudioReadError(f"{label}: samples are not finite", "non-finite")
    if peak < SILENT_PEAK:
        raise AudioReadError(f"{label}: silent (peak {peak:.1e} of full scale)", "silent")
    if float((np.abs(x) >= 0.999).mean()) > CLIPPED_SHARE:
        notes.append("clipped")
    if rate != sample_rate:
        x = resample(x, int(rate), sample_rate)
        notes.append(f"resampled from {rate} Hz")
    if max_seconds is not None and len(x) > max_seconds * sample_rate:
        x = x[: int(max_seconds * sample_rate)]
        notes.append(f"cut at {max_seconds:g} s")
    return Audio(np.ascontiguousarray(x, dtype=np.float32), sample_rate, notes)


def resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling (scipy's ``resample_poly``) from ``rate`` to ``target`` Hz, float32."""
    from scipy.signal import resample_poly

    ratio = Fraction(target, rate).limit_denominator(1000)
    return resample_poly(x, ratio.numerator, ratio.denominator).astype(np.float32)


def write_wav(path: str | os.PathLike, samples: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM mono, written atomically."""
    from scipy.io import wavfile

    from clipforge.io import atomic_file

    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    with atomic_file(Path(path)) as tmp:
        wavfile.write(tmp, sample_rate, pcm)
