"""``clipforge word2vec train`` / ``clipforge word2vec neighbours``."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("word2vec", help="train skip-gram word vectors with negative sampling; query neighbours")
    wsub = p.add_subparsers(dest="w2v_command", required=True, metavar="W2V_COMMAND")
    t = wsub.add_parser("train", help="train on a text file (one sentence per line) or a CSV caption column")
    t.add_argument("corpus")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--column", default=None, help="CSV column to read (default: caption)")
    t.add_argument("--dim", type=int, default=64)
    t.add_argument("--window", type=int, default=4)
    t.add_argument("--negatives", type=int, default=5)
    t.add_argument("--min-count", type=int, default=2)
    t.add_argument("--subsample", type=float, default=None,
                   help="frequent-word subsampling threshold t (default: 1e-3 for corpora of 100k+ tokens, else off)")
    t.add_argument("--epochs", type=int, default=5)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=run_train)
    n = wsub.add_parser("neighbours", help="nearest words by cosine similarity")
    n.add_argument("model", help="folder written by word2vec train")
    n.add_argument("words", nargs="+")
    n.add_argument("-k", type=int, default=8)
    n.set_defaults(func=run_neighbours)


def run_train(args: argparse.Namespace) -> int:
    from clipforge.word2vec.trainer import Word2VecConfig, read_sentences, save_word2vec, train_word2vec

    cfg = Word2VecConfig(dim=args.dim, window=args.window, negatives=args.negatives, min_count=args.min_count,
                         subsample=args.subsample, epochs=args.epochs, seed=args.seed)
    sentences = read_sentences(args.corpus, args.column)
    model, vocab, losses = train_word2vec(sentences, cfg)
    out = save_word2vec(model, vocab, model.config, args.out)
    print(f"{len(vocab)} words, loss per epoch: {', '.join(f'{v:.3f}' for v in losses)}; saved to {out}")
    return 0


def run_neighbours(args: argparse.Namespace) -> int:
    from clipforge.word2vec.trainer import load_word2vec, nearest

    vectors, vocab = load_word2vec(args.model)
    for word in args.words:
        near = ", ".join(f"{w} {s:.2f}" for w, s in nearest(vectors, vocab, word, args.k))
        print(f"{word}: {near}")
    return 0
