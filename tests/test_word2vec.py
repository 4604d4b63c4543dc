"""word2vec on the synthetic captions: colours end up near colours, shapes near shapes."""

from __future__ import annotations

import pytest
import torch

from clipforge.cli.main import main
from clipforge.data.synthetic import COLOURS, SHAPES, SynthConfig, generate
from clipforge.word2vec import Vocab, Word2VecConfig, nearest, train_word2vec
from clipforge.word2vec.vocab import tokenize


def test_vocab_subsampling_and_noise() -> None:
    v = Vocab.build([["a", "a", "a", "b"], ["a", "c", "b"]])
    assert v.words == ["a", "b", "c"] and v.counts == [4, 2, 1]
    noise = v.noise_distribution()
    expected = torch.tensor([4, 2, 1], dtype=torch.float64) ** 0.75
    torch.testing.assert_close(noise, expected / expected.sum())
    keep = v.keep_probability(t=0.1)
    f = torch.tensor([4 / 7, 2 / 7, 1 / 7], dtype=torch.float64)
    torch.testing.assert_close(keep, (((f / 0.1).sqrt() + 1) * 0.1 / f).clamp(max=1))
    assert keep[0] < keep[1] < keep[2] == 1  # the rarest word is always kept


@pytest.mark.slow
def test_colours_near_colours_shapes_near_shapes(tmp_path) -> None:
    captions = [c for _, c, _ in generate("train", SynthConfig(n_train=3000, image_size=16))]
    model, vocab, losses = train_word2vec([tokenize(c) for c in captions],
                                          Word2VecConfig(dim=32, epochs=3, seed=0), progress=False)
    assert losses[-1] < losses[0]
    vectors = model.vectors()
    for group in (list(COLOURS), list(SHAPES)):
        hits = [sum(w in group for w, _ in nearest(vectors, vocab, word, k=4)) / 4 for word in group]
        assert sum(hits) / len(hits) >= 0.75, (group, hits)


def test_cli_train_and_neighbours(tmp_path, capsys) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["the cat sat on the mat", "the dog sat on the rug", "a cat and a dog"] * 30))
    assert main(["word2vec", "train", str(corpus), "--out", str(tmp_path / "w2v"), "--epochs", "2", "--dim", "8"]) == 0
    assert main(["word2vec", "neighbours", str(tmp_path / "w2v"), "cat", "-k", "3"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("cat: ")
    assert main(["word2vec", "neighbours", str(tmp_path / "w2v"), "zebra"]) == 2
