"""The tokenizer of a Hugging Face causal language model folder (GPT-2 layout), with clipforge's
call convention, for captioners that decode with that model.

A GPT-2 folder holds ``tokenizer.json``, or ``vocab.json`` + ``merges.txt`` (byte-level BPE), and
its ``config.json`` names the start and end tokens (GPT-2: ``<|endoftext|>``, 50256, for both).
Texts keep their case (GPT-2 was trained on cased text). Rows are padded with the end token, as
GPT-2 has no padding token; captioning losses ignore every position after a row's first end token.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from clipforge.errors import ConfigError
from clipforge.tokenizer.bpe import pack


class CausalLMTokenizer:
    """Callable: list of strings -> int64 [N, context_length]: start, tokens, end, end-padding."""

    kind = "causal"

    def __init__(self, tokenizer: Tokenizer, sot_token_id: int, eot_token_id: int, context_length: int = 32) -> None:
        self.tokenizer = tokenizer
        self.sot_token_id, self.eot_token_id = sot_token_id, eot_token_id
        self.context_length = context_length
        self.pad_token_id = eot_token_id
        self.vocab_size = tokenizer.get_vocab_size()
        tokenizer.no_padding()
        tokenizer.no_truncation()

    @classmethod
    def from_folder(cls, folder: str | Path, context_length: int = 32) -> CausalLMTokenizer:
        """The tokenizer of a Hugging Face model folder, its start/end ids from ``config.json``."""
        folder = Path(folder)
        if (folder / "tokenizer.json").is_file():
            tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            tok = Tokenizer(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
        else:
            raise ConfigError(f"{folder}: no tokenizer.json, nor vocab.json and merges.txt (a GPT-2 tokenizer)")
        config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
        eot = config.get("eos_token_id")
        sot = config.get("bos_token_id", eot)
        if not isinstance(eot, int) or not isinstance(sot, int):
            raise ConfigError(f"{folder}/config.json: bos_token_id and eos_token_id must name the start and end "
                              f"tokens (got {sot!r}, {eot!r})")
        return cls(tok, sot, eot, context_length)

    @classmethod
    def load(cls, path: str | Path, sot_token_id: int, eot_token_id: int, context_length: int) -> CausalLMTokenizer:
        return cls(Tokenizer.from_file(str(path)), sot_token_id, eot_token_id, context_length)

    def save(self, path: str | Path) -> None:
        self.tokenizer.save(str(path))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(" ".join(text.split()), add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        keep = [i for i in ids if i not in (self.sot_token_id, self.eot_token_id)]
        return self.tokenizer.decode(keep).strip()

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        encoded = [e.ids for e in self.tokenizer.encode_batch([" ".join(t.split()) for t in texts],
                                                               add_special_tokens=False)]
        return pack(encoded, self.sot_token_id, self.eot_token_id, context_length or self.context_length,
                    pad=self.eot_token_id)

    def to_dict(self) -> dict:
        return {"type": self.kind, "context_length": self.context_length, "file": "tokenizer.json",
                "sot_token_id": self.sot_token_id, "eot_token_id": self.eot_token_id}
