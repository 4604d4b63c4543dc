"""``clipforge text data|train|embed`` and ``clipforge eval text``: thin wrappers over :mod:`clipforge.text`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from clipforge.cli.options import add_run_options
    from clipforge.config import choices
    from clipforge.text.config import TextTrainConfig

    p = sub.add_parser("text", help="text embeddings: fine-tune or pretrain a sentence encoder, embed texts")
    tsub = p.add_subparsers(dest="text_command", required=True, metavar="TEXT_COMMAND")
    d = tsub.add_parser("data", help="write the built-in text data: training pairs (scene captions, Python's "
                        "documentation) and evaluation task CSVs")
    d.add_argument("out")
    d.add_argument("--n-train", type=int, default=4000, help="scene caption pairs for training (default: 4000)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=run_data)

    t = tsub.add_parser("train", help="fine-tune (or pretrain) a sentence encoder",
                        description="Options from --config (YAML/JSON) and key=value overrides; --help-config lists "
                        "them. The model is saved to OUT_DIR/model in sentence-transformers' layout.")
    t.add_argument("--objective", choices=choices(TextTrainConfig, "objective"), default=None)
    add_run_options(t)
    t.set_defaults(func=run_train)

    e = tsub.add_parser("embed", help="embed texts (a text file, one per line, or a CSV column): a .npy file, or an "
                        "embeddings folder that clipforge index turns into a searchable index of the texts")
    e.add_argument("input")
    e.add_argument("--model", required=True, help="a sentence encoder folder")
    e.add_argument("--out", required=True, help="X.npy ([N, D] float32, the non-empty texts in input order) or a new "
                   "folder (for clipforge index; clipforge search then finds texts by a text query)")
    e.add_argument("--column", default=None, help="CSV column (default: text, sentence or caption)")
    e.add_argument("--task", default=None, help="the model's instruction to prepend (a key of its prompts)")
    e.add_argument("--batch-size", type=int, default=64)
    e.set_defaults(func=run_embed)


def add_eval_parser(esub: argparse._SubParsersAction) -> None:
    t = esub.add_parser("text", help="a sentence encoder on text tasks: retrieval, similarity, deduplication, "
                        "classification, clustering (task CSVs; their header says the kind)")
    t.add_argument("tasks", nargs="+", help="task CSVs or folders of them (clipforge text data OUT writes OUT/eval)")
    t.add_argument("--model", required=True, help="a sentence encoder folder (clipforge or sentence-transformers)")
    t.add_argument("--out", default="results", help="folder for the result JSON (default: results)")
    t.add_argument("--batch-size", type=int, default=64)
    t.set_defaults(func=run_eval)


def run_data(args: argparse.Namespace) -> int:
    from clipforge.text.builtin import write_text_data

    out = write_text_data(args.out, n_train=args.n_train, seed=args.seed)
    print(f"training data in {out}/train (pairs.csv, sentences.txt); evaluation tasks in {out}/eval")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from clipforge.cli.options import overrides_with_flags, print_config_help
    from clipforge.text.config import TextTrainConfig

    if args.help_config:
        return print_config_help(TextTrainConfig)
    cfg = TextTrainConfig.load(args.config, overrides_with_flags(args, ("objective",)))
    from clipforge.text.train import train_text

    result = train_text(cfg, resume=args.resume, progress=not args.no_progress)
    if result.state.evals:
        shown = {k: round(v, 4) for k, v in result.state.evals[-1].items() if isinstance(v, float)}
        print(json.dumps(shown))
    print(f"model saved to {result.model_path}")
    return 0


def _sentence_encoder(path: str):
    from clipforge.checkpoints import load
    from clipforge.errors import CheckpointError
    from clipforge.models.sentence_encoder import SentenceEncoder

    model = load(path)
    if not isinstance(model, SentenceEncoder):
        raise CheckpointError(f"{path}: not a sentence encoder (a folder written by clipforge text train or "
                              "sentence-transformers)")
    return model


def run_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from clipforge.io import atomic_file
    from clipforge.text.data import read_text_data

    model = _sentence_encoder(args.model)
    texts = read_text_data(args.input, text_column=args.column).anchors  # a pairs CSV: its anchor column
    vectors = model.encode(texts, batch_size=args.batch_size, task=args.task, progress=True).numpy()
    if not args.out.endswith(".npy"):
        from clipforge.search.embed import save_embeddings

        save_embeddings(args.out, vectors, captions=texts, model_path=str(Path(args.model).resolve()))
        print(f"{len(texts)} texts -> {args.out}; next: clipforge index {args.out} --out INDEX")
        return 0
    with atomic_file(Path(args.out)) as tmp, open(tmp, "wb") as f:
        np.save(f, vectors.astype(np.float32))
    print(f"{len(texts)} texts -> {args.out} ({vectors.shape[1]} dims)")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from clipforge.evaluation.results import write_result
    from clipforge.text.tasks import evaluate_text, load_tasks, model_encoder

    model = _sentence_encoder(args.model)
    tasks = load_tasks(args.tasks)
    results = evaluate_text(model_encoder(model, args.batch_size), tasks)
    width = max(len(n) for n in results)
    for name, r in results.items():
        shown = "  ".join(f"{k} {v:.3f}" for k, v in r.items() if isinstance(v, float) and k != "threshold")
        print(f"{name:{width}s}  {shown}")
    metrics = {f"{name}/{k}": v for name, r in results.items() for k, v in r.items() if isinstance(v, float)}
    path = write_result(args.out, "text", args.model, ",".join(args.tasks), metrics, {"batch_size": args.batch_size})
    print(f"result written to {path}")
    return 0
