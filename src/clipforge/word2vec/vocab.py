"""Vocabulary, frequent-word subsampling and the noise distribution of word2vec.

* Subsampling (Mikolov et al. 2013b, section 2.3, in the form of the reference C code): a word of
  corpus frequency f is kept with probability min(1, (sqrt(f / t) + 1) * t / f).
* Noise distribution for negative samples: the unigram distribution raised to the 3/4 power.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import regex as re
import torch

_WORD = re.compile(r"[\p{L}\p{N}']+")


def tokenize(line: str) -> list[str]:
    return _WORD.findall(line.lower())


@dataclass
class Vocab:
    words: list[str]
    counts: list[int]

    @classmethod
    def build(cls, sentences: Iterable[list[str]], min_count: int = 1, max_size: int | None = None) -> Vocab:
        counter = Counter(w for s in sentences for w in s)
        items = sorted(((w, c) for w, c in counter.items() if c >= min_count), key=lambda wc: (-wc[1], wc[0]))
        items = items[:max_size] if max_size else items
        return cls([w for w, _ in items], [c for _, c in items])

    def __post_init__(self) -> None:
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def keep_probability(self, t: float = 1e-3) -> torch.Tensor:
        f = torch.tensor(self.counts, dtype=torch.float64)
        f = f / f.sum()
        return ((f / t).sqrt() + 1).mul(t / f).clamp(max=1.0)

    def noise_distribution(self, power: float = 0.75) -> torch.Tensor:
        p = torch.tensor(self.counts, dtype=torch.float64) ** power
        return p / p.sum()

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"words": self.words, "counts": self.counts}))

    @classmethod
    def load(cls, path: Path) -> Vocab:
        d = json.loads(path.read_text())
        return cls(d["words"], d["counts"])
