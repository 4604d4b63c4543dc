"""Tokenizers: OpenAI's CLIP BPE, and a byte-level BPE trained on your own captions."""

from clipforge.tokenizer.bpe import BPETokenizer, default_bpe_path
from clipforge.tokenizer.trained import HFTokenizer, TrainedBPETokenizer

__all__ = ["BPETokenizer", "HFTokenizer", "TrainedBPETokenizer", "default_bpe_path"]
