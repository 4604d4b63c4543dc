from __future__ import annotations

import json

import pytest
import torch

from clipforge.errors import ConfigError
from clipforge.tokenizer import BPETokenizer, TrainedBPETokenizer
from conftest import PEERS


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer()


def test_matches_open_clip_exactly(bpe: BPETokenizer) -> None:
    expected = json.loads((PEERS / "openai_bpe_tokenizer" / "expected.json").read_text())
    ids = bpe(expected["texts"], context_length=expected["context_length"])
    assert ids.dtype == torch.int64
    assert ids.tolist() == expected["ids"]


def test_truncation_keeps_end_token_last(bpe: BPETokenizer) -> None:
    ids = bpe(["word " * 200])[0]
    assert ids[0] == bpe.sot_token_id and ids[-1] == bpe.eot_token_id
    assert (ids != 0).all()


def test_end_token_is_highest_id(bpe: BPETokenizer) -> None:
    assert bpe.eot_token_id == bpe.vocab_size - 1 == 49407
    assert bpe(["a cat"])[0].argmax() == 3  # sot, a, cat, eot


def test_decode_round_trip(bpe: BPETokenizer) -> None:
    assert bpe.decode(bpe.encode("A Photo of a CAT")) == "a photo of a cat"


CAPTIONS = [f"a {size} {colour} {shape} in the {place}" for size in ("small", "large")
            for colour in ("red", "green", "blue", "yellow") for shape in ("circle", "square", "star")
            for place in ("top left", "bottom right", "centre")]


def test_trained_tokenizer_round_trip(tmp_path) -> None:
    tok = TrainedBPETokenizer.train(CAPTIONS, vocab_size=300, context_length=16)
    assert tok.eot_token_id == tok.vocab_size - 1
    assert tok.sot_token_id == tok.vocab_size - 2
    ids = tok(["a small red circle in the centre", "x" * 100])
    assert ids.shape == (2, 16)
    assert ids[0].argmax() == (ids[0] != 0).sum() - 1  # pooled position is the end token
    assert ids[1, -1] == tok.eot_token_id
    assert tok.decode(ids[0].tolist()) == "a small red circle in the centre"
    tok.save(tmp_path / "tokenizer.json")
    again = TrainedBPETokenizer.load(tmp_path / "tokenizer.json", context_length=16)
    assert torch.equal(again(CAPTIONS), tok(CAPTIONS))


def test_trained_tokenizer_cleans_like_openai() -> None:
    tok = TrainedBPETokenizer.train(CAPTIONS, vocab_size=300)
    assert torch.equal(tok(["A  SMALL &amp; red"]), tok(["a small & red"]))


def test_too_small_vocabulary_is_refused() -> None:
    with pytest.raises(ConfigError, match="vocab_size"):
        TrainedBPETokenizer.train(CAPTIONS, vocab_size=100)
