"""Spoken captions for the synthetic scenes, made offline with espeak-ng (Debian's ``espeak-ng``).

Each clip is the scene's caption read by one of 8 English accents x 8 voice variants, at 150-210
words a minute and pitch 20-80, with white noise at 10-30 dB SNR and a random level, written as
16-bit 16 kHz mono WAV, all drawn from the seed and the clip's index. The words of the scenes
(colours and shapes) are also written alone, for embedding arithmetic.
"""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from clipforge.errors import ConfigError

ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
           "en-us-nyc")
VARIANTS = ("", "+m1", "+m3", "+m5", "+f1", "+f2", "+f4", "+klatt")
SAMPLE_RATE = 16000


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def require_espeak() -> None:
    if not espeak_available():
        raise ConfigError("speech needs espeak-ng (Debian: apt-get install espeak-ng; `make venv` installs it when "
                          "run as root)")


def speak(text: str, rng: np.random.Generator) -> np.ndarray:
    """``text`` read by a voice drawn from ``rng``: float32 samples at 16 kHz, noise added."""
    from clipforge.audio.wav import read_wav

    voice = ACCENTS[int(rng.integers(len(ACCENTS)))] + VARIANTS[int(rng.integers(len(VARIANTS)))]
    speed, pitch = int(rng.integers(150, 211)), int(rng.integers(20, 81))
    snr_db, level = rng.uniform(10, 30), rng.uniform(0.3, 0.9)
    noise_seed = int(rng.integers(2**31))
    out = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                         capture_output=True, check=True).stdout
    x = read_wav(out, SAMPLE_RATE, name=f"espeak-ng's reading of {text!r}").samples
    x = x / max(float(np.abs(x).max()), 1e-6)
    noise = np.random.default_rng(noise_seed).normal(0, 1, size=x.shape)
    noise *= np.sqrt(np.mean(x**2) / 10 ** (snr_db / 10))
    y = x + noise
    return (level * y / np.abs(y).max()).astype(np.float32)


def write_clips(texts: list[str], paths: list[Path], seeds: list[list[int]], workers: int = 2,
                progress: object = None) -> None:
    """Speak ``texts[i]`` into ``paths[i]`` with the voice drawn from ``seeds[i]`` (parallel processes)."""
    from clipforge.audio.wav import write_wav

    require_espeak()

    def one(i: int) -> None:
        write_wav(paths[i], speak(texts[i], np.random.default_rng(seeds[i])), SAMPLE_RATE)

    with ThreadPoolExecutor(max_workers=workers) as pool:  # espeak-ng runs as a process: threads suffice
        for _ in pool.map(one, range(len(texts))):
            if progress is not None:
                progress.advance()  # type: ignore[attr-defined]
