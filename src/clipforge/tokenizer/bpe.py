"""OpenAI CLIP's byte-level BPE tokenizer, token for token as open_clip's ``SimpleTokenizer``.

Text is cleaned (ftfy, HTML unescape, whitespace) and lower-cased, split by CLIP's regex, each
piece mapped byte-wise to unicode and merged by the ranked BPE merges; every text is wrapped in
``<start_of_text>`` ... ``<end_of_text>`` and padded with 0 to the context length. A text that is
too long is cut and its last token replaced by ``<end_of_text>``, so the end token is always there.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from importlib import resources
from pathlib import Path

import regex as re
import torch

from clipforge.errors import ConfigError
from clipforge.tokenizer.clean import clean_lower

_PATTERN = re.compile(
    r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    re.IGNORECASE,
)


def default_bpe_path() -> Path:
    """The BPE merges file OpenAI released with CLIP (MIT licence), shipped with clipforge."""
    return Path(str(resources.files("clipforge") / "assets" / "bpe_simple_vocab_16e6.txt.gz"))


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """A reversible map of the 256 bytes to printable unicode characters (GPT-2's table)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return set(zip(word[:-1], word[1:]))


class BPETokenizer:
    """Callable: list of strings -> int64 tensor [N, context_length].

    Args:
        bpe_path: the gzipped merges file (defaults to the bundled OpenAI file).
        context_length: tokens per text, start and end tokens included.
    """

    kind = "openai_bpe"

    def __init__(self, bpe_path: str | Path | None = None, context_length: int = 77) -> None:
        path = Path(bpe_path) if bpe_path is not None else default_bpe_path()
        if not path.is_file():
            raise ConfigError(f"{path}: BPE merges file not found")
        self.bpe_path = path
        self.context_length = context_length
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
        self.special_tokens = ["<start_of_text>", "<end_of_text>"]
        vocab += self.special_tokens
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.cache = {t: t for t in self.special_tokens}
        self.sot_token_id = self.encoder["<start_of_text>"]
        self.eot_token_id = self.encoder["<end_of_text>"]
        self.vocab_size = len(self.encoder)

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = _pairs(word)
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new.extend(word[i:])
                    break
                new.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new.append(first + second)
                    i += 2
                else:
                    new.append(word[i])
                    i += 1
            word = tuple(new)
            if len(word) == 1:
                break
            pairs = _pairs(word)
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without start/end tokens."""
        ids: list[int] = []
        for piece in re.findall(_PATTERN, clean_lower(text)):
            piece = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(piece).split(" "))
        return ids

    def decode(self, ids: list[int]) -> str:
        text = "".join(self.decoder[i] for i in ids if i in self.decoder)
        raw = bytearray(self.byte_decoder[c] for c in text if c in self.byte_decoder)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        return pack(
            [self.encode(t) for t in texts], self.sot_token_id, self.eot_token_id,
            context_length or self.context_length,
        )

    def to_dict(self) -> dict:
        return {"type": self.kind, "context_length": self.context_length}


def pack(encoded: list[list[int]], sot: int, eot: int, context_length: int, pad: int = 0) -> torch.Tensor:
    """Wrap each id list in start/end tokens, cut to the context keeping the end token, pad with ``pad``."""
    out = torch.full((len(encoded), context_length), pad, dtype=torch.long)
    for i, ids in enumerate(encoded):
        tokens = [sot, *ids, eot]
        if len(tokens) > context_length:
            tokens = tokens[:context_length]
            tokens[-1] = eot
        out[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return out
