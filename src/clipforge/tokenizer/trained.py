"""A byte-level BPE tokenizer trained on the user's own captions (engine: HF ``tokenizers``).

Cleaning and packing are the same as :class:`~clipforge.tokenizer.bpe.BPETokenizer`. The start and
end tokens are added after training, so the end token has the highest id, which is where the
text tower pools.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from clipforge.errors import ConfigError
from clipforge.tokenizer.bpe import pack
from clipforge.tokenizer.clean import clean_lower

SOT, EOT = "<start_of_text>", "<end_of_text>"


class TrainedBPETokenizer:
    """Callable: list of strings -> int64 tensor [N, context_length].

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` whose last two ids are the start and end tokens.
        context_length: tokens per text, start and end tokens included.
    """

    kind = "bpe"

    def __init__(self, tokenizer: Tokenizer, context_length: int = 77) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length
        sot, eot = tokenizer.token_to_id(SOT), tokenizer.token_to_id(EOT)
        if sot is None or eot is None:
            raise ConfigError(f"tokenizer has no {SOT} / {EOT} tokens")
        self.sot_token_id, self.eot_token_id = sot, eot
        self.vocab_size = tokenizer.get_vocab_size()
        if eot != self.vocab_size - 1:
            raise ConfigError(f"{EOT} must have the highest id ({self.vocab_size - 1}), has {eot}")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 4096, context_length: int = 77,
              min_frequency: int = 2) -> TrainedBPETokenizer:
        """Learn ``vocab_size`` tokens (the two special tokens included) from ``texts``."""
        if vocab_size < 260:
            raise ConfigError(f"vocab_size must be at least 260 (256 bytes + specials), got {vocab_size}")
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.Sequence([])
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size - 2, min_frequency=min_frequency, show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator((clean_lower(t) for t in texts), trainer=trainer)
        tok.add_special_tokens([SOT, EOT])  # appended: the end token gets the highest id
        return cls(tok, context_length)

    @classmethod
    def load(cls, path: str | Path, context_length: int = 77) -> TrainedBPETokenizer:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: tokenizer file not found")
        return cls(Tokenizer.from_file(str(path)), context_length)

    def save(self, path: str | Path) -> None:
        self.tokenizer.save(str(path))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(clean_lower(text), add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        keep = [i for i in ids if i not in (0, self.sot_token_id, self.eot_token_id)]
        return self.tokenizer.decode(keep).strip()

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        encoded = [e.ids for e in self.tokenizer.encode_batch([clean_lower(t) for t in texts],
                                                               add_special_tokens=False)]
        return pack(encoded, self.sot_token_id, self.eot_token_id, context_length or self.context_length)

    def to_dict(self) -> dict:
        return {"type": self.kind, "context_length": self.context_length, "file": "tokenizer.json"}


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` (e.g. BERT's WordPiece) with clipforge's call convention.

    Callable: list of strings -> int64 [N, context_length], with the tokenizer's own special
    tokens ([CLS] ... [SEP]), truncated and padded with its pad id.
    """

    kind = "hf"

    def __init__(self, tokenizer: Tokenizer, context_length: int = 77, pad_token_id: int = 0) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.pad_token_id = pad_token_id
        self.vocab_size = tokenizer.get_vocab_size()
        tokenizer.enable_truncation(max_length=context_length)
        tokenizer.enable_padding(length=context_length, pad_id=pad_token_id)

    @classmethod
    def load(cls, path: str | Path, context_length: int = 77, pad_token_id: int = 0) -> HFTokenizer:
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise ConfigError(f"{path}: tokenizer file not found")
        return cls(Tokenizer.from_file(str(path)), context_length, pad_token_id)

    def save(self, path: str | Path) -> None:
        self.tokenizer.save(str(path))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.context_length
        if length != self.context_length:  # the tokenizer's own truncation keeps its end token
            self.tokenizer.enable_truncation(max_length=length)
            self.tokenizer.enable_padding(length=length, pad_id=self.pad_token_id)
        try:
            ids = [e.ids for e in self.tokenizer.encode_batch(list(texts))]
        finally:
            if length != self.context_length:
                self.tokenizer.enable_truncation(max_length=self.context_length)
                self.tokenizer.enable_padding(length=self.context_length, pad_id=self.pad_token_id)
        return torch.tensor(ids, dtype=torch.long)

    def to_dict(self) -> dict:
        return {"type": self.kind, "context_length": self.context_length, "file": "tokenizer.json",
                "pad_token_id": self.pad_token_id}
