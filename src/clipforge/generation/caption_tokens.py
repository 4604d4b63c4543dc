"""The caption tokens of the generators that read text themselves (alignDRAW, DALL-E, DALL-E mini):
a byte-level BPE learned from the training captions, as DALL-E learned its own (Ramesh et al. 2021,
section 2.2), saved with the model as ``tokenizer.json``.

Captions are packed as [start, tokens, end] and padded to a fixed length with one extra id
(``vocab_size``), so a pad is never mistaken for a byte; ``lengths`` count the start and end tokens.
"""

from __future__ import annotations

import logging

import torch

from clipforge.tokenizer.bpe import pack
from clipforge.tokenizer.trained import TrainedBPETokenizer

log = logging.getLogger(__name__)


def train_caption_tokenizer(captions: list[str], vocab_size: int, length: int) -> TrainedBPETokenizer:
    """A BPE of ``vocab_size`` ids (specials included) over ``captions``, packing to ``length``."""
    return TrainedBPETokenizer.train(captions, vocab_size=vocab_size, context_length=length)


def caption_ids(tokenizer: TrainedBPETokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [N, L] with pads set to ``tokenizer.vocab_size``, lengths [N]); warns when captions are cut."""
    encoded = [tokenizer.encode(t) for t in texts]  # once: the cut count and the packing share it
    ids = pack(encoded, tokenizer.sot_token_id, tokenizer.eot_token_id, tokenizer.context_length)
    lengths = (ids == tokenizer.eot_token_id).float().argmax(1) + 1
    cut = sum(len(e) + 2 > tokenizer.context_length for e in encoded)
    if cut:
        log.warning(f"{cut} caption(s) longer than the generator's {tokenizer.context_length} text tokens are cut")
    pos = torch.arange(ids.shape[1])
    return torch.where(pos[None] < lengths[:, None], ids, tokenizer.vocab_size), lengths
