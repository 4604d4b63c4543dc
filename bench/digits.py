"""End-to-end check on scikit-learn's handwritten digits (real data, no download).

1. Linear probe (CLIP paper protocol) on raw pixels, on a randomly initialised image tower, and
   on the image tower of a small CLIP trained here on the digits' training split with generated
   captions ("a photo of the digit seven", "7", "a handwritten seven", ...).
2. Zero-shot classification of the test split by that CLIP with word prompts ("a photo of the
   digit seven.") versus bare numerals ("7").

    .venv/bin/python bench/digits.py                 # about 3 minutes on 2 cores
    .venv/bin/python bench/digits.py --epochs 10     # quicker, lower numbers
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

NUMERALS = [str(i) for i in range(10)]


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def captions(word: str, numeral: str) -> list[str]:
    return [f"a photo of the digit {word}", f"{_a('handwritten ' + word)}", f"the number {numeral}", numeral,
            f"digit {numeral}", _a(word), f"a handwritten digit {numeral}", f"an image of the number {word}"]


def main() -> None:
    from clipforge.data.datasets import DIGIT_NAMES, load_classification, pixel_features
    from clipforge.evaluation.embed import embed_images
    from clipforge.evaluation.linear_probe import linear_probe
    from clipforge.evaluation.zero_shot import classification_metrics, zero_shot_logits
    from clipforge.models import CLIP
    from clipforge.training.config import TrainConfig
    from clipforge.training.trainer import train
    from common import machine, markdown_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="keep the run here (default: a temporary folder)")
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    torch.set_num_threads(2)

    trainset, testset = load_classification("digits", "train"), load_classification("digits", "test")
    work = Path(args.out or tempfile.mkdtemp(prefix="clipforge-digits-"))
    work.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(args.seed)
    with open(work / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        for img, label in zip(trainset.images, trainset.labels):
            options = captions(DIGIT_NAMES[label], NUMERALS[label])
            for i in torch.randperm(len(options), generator=g)[:3].tolist():  # 3 captions per image
                w.writerow([img, options[i]])

    cfg = TrainConfig.from_dict({
        "data": {"train": str(work / "train.csv")},
        "model": {"name": "tiny-rn-64", "tokenizer": "train", "vocab_size": 300, "context_length": 16,
                  "overrides": {"vision": {"image_size": 32, "width": 16, "head_width": 16}}},
        "optim": {"lr": 1e-3, "weight_decay": 0.1, "warmup_steps": 20},
        "epochs": args.epochs, "batch_size": 128, "out_dir": str(work / "run"), "eval_every_epochs": 0,
        "seed": args.seed, "tensorboard": False,
    })
    t0 = time.perf_counter()
    model = train(cfg, progress=False).model.eval()
    train_min = (time.perf_counter() - t0) / 60
    random_tower = CLIP(model.config).eval()
    random_tower.preprocess = model.preprocess

    rows = []
    ytr, yte = torch.tensor(trainset.labels), torch.tensor(testset.labels)
    xtr, _ = pixel_features(trainset.images)
    xte, _ = pixel_features(testset.images)
    m = linear_probe(xtr, ytr, xte, yte, n_classes=10, normalize=False)
    rows.append(["linear probe", "raw pixels (32x32x3)", f"{m['lp_acc1']:.1%}", f"C={m['C']:.3g}"])
    for name, tower in (("random-init image tower", random_tower), ("trained clipforge image tower", model)):
        ftr, _, _ = embed_images(tower, trainset.images)
        fte, _, _ = embed_images(tower, testset.images)
        m = linear_probe(ftr, ytr, fte, yte, n_classes=10)
        rows.append(["linear probe", name, f"{m['lp_acc1']:.1%}", f"C={m['C']:.3g}"])
    fte, _, _ = embed_images(model, testset.images)
    for label, classes, templates in (("word prompts: 'a photo of the digit seven.'", DIGIT_NAMES,
                                       ["a photo of the digit {c}."]),
                                      ("numeral prompts: '7'", NUMERALS, ["{c}"])):
        m = classification_metrics(zero_shot_logits(model, fte, classes, templates), yte)
        rows.append(["zero-shot", label, f"{m['acc1']:.1%}", f"mean per-class recall {m['mean_per_class_recall']:.1%}"])
    print(f"trained a small CLIP for {args.epochs} epochs on {len(trainset)} digit images x 3 captions "
          f"in {train_min:.1f} min; test set: {len(testset)} images\n")
    print(markdown_table(["evaluation", "features / prompts", "test acc1", "notes"], rows))


if __name__ == "__main__":
    main()
