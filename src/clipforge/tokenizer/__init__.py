"""Tokenizers: OpenAI's CLIP BPE, and a byte-level BPE trained on your own captions."""

from clipforge.tokenizer.bpe import BPETokenizer, default_bpe_path
from clipforge.tokenizer.trained import TrainedBPETokenizer

__all__ = ["BPETokenizer", "TrainedBPETokenizer", "default_bpe_path"]
