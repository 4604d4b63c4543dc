"""Few-shot probes against zero-shot, on the digits and the synthetic scenes (the CLIP paper's Figure 7 shape).

For k = 1 .. 16 examples per class (drawn from the training split only): the zero-shot classifier,
the plain linear probe (C by cross-validation inside the k-shot examples) and the zero-shot-initialised
probe (pull chosen the same way). Scenes: single-object scenes of all 64 (colour, shape) classes,
40 per class, 24 for training and 16 for testing. Every figure is the mean over ``--seeds`` draws.

    .venv/bin/python bench/fewshot.py --model outputs/demo/run/model     # the demo's model (make demo)
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def scenes(root: Path) -> tuple:
    """(train, test) LabelledImages: 40 single-object scenes per class, split 24 / 16."""
    from clipforge.data.datasets import load_classification
    from clipforge.data.synthetic import SynthConfig, class_names, write_dataset

    write_dataset(root, SynthConfig(seed=7, n_train=0, n_val=0, n_zeroshot_per_class=40), progress=False)
    rows = []
    for name in ("zeroshot_seen.csv", "zeroshot_heldout.csv"):
        with open(root / name) as f:
            rows += [(str(root / r["image"]), r["label"]) for r in csv.DictReader(f)]
    seen: dict[str, int] = {}
    split = {"train": [], "test": []}
    for image, label in rows:
        seen[label] = seen.get(label, 0) + 1
        split["train" if seen[label] <= 24 else "test"].append((image, label))
    out = []
    for part, items in split.items():
        with open(root / f"{part}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "label"])
            w.writerows(items)
        out.append(load_classification(str(root / f"{part}.csv"), classes=class_names()))
    return tuple(out)


def main() -> None:
    from clipforge.checkpoints import load
    from clipforge.data.datasets import load_classification
    from clipforge.demo import TEMPLATES
    from clipforge.evaluation.cache import image_features
    from clipforge.evaluation.fewshot import few_shot_probe, zero_shot_init_few_shot
    from clipforge.evaluation.templates import template_sets
    from clipforge.evaluation.zero_shot import classification_metrics, zero_shot_classifier
    from common import machine, markdown_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/demo/run/model")
    parser.add_argument("-k", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"machine: {machine()}; model {args.model}\n")
    model = load(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="clipforge-fewshot-"))
    os.environ["CLIPFORGE_CACHE"] = str(tmp / "cache")
    sets = {"digits": (load_classification("digits", "train"), load_classification("digits", "test"),
                       template_sets()["digits"]),
            "scenes": (*scenes(tmp / "scenes"), TEMPLATES)}
    for name, (train, test, templates) in sets.items():
        xtr, itr, _ = image_features(model, train.images, progress=False)
        xte, ite, _ = image_features(model, test.images, progress=False)
        ytr, yte = torch.tensor(train.labels)[itr], torch.tensor(test.labels)[ite]
        zs = zero_shot_classifier(model, train.classes, templates)
        zs_acc = classification_metrics(xte @ zs.T, yte)["acc1"]
        rows = []
        for k in args.k:
            plain = [few_shot_probe(xtr, ytr, xte, yte, k, len(train.classes), s)["lp_acc1"] for s in range(args.seeds)]
            init = [zero_shot_init_few_shot(xtr, ytr, xte, yte, zs, k, s) for s in range(args.seeds)]
            acc = sum(m["lp_acc1"] for m in init) / len(init)
            p = sum(plain) / len(plain)
            chosen = ", ".join(sorted({m["classifier"] for m in init}))
            rows.append([k, f"{zs_acc:.3f}", f"{p:.3f}", f"{acc:.3f}", chosen,
                         "yes" if acc >= min(zs_acc, p) - 1e-9 else "NO", f"{acc - max(zs_acc, p):+.3f}"])
            print(" | ".join(str(c) for c in rows[-1]), flush=True)
        print(f"\n{name} ({len(train.classes)} classes; chance {1 / len(train.classes):.3f}):\n")
        print(markdown_table(["k", "zero-shot", "plain probe", "zero-shot init", "CV chose",
                              ">= min(zero-shot, plain)", "vs max(zero-shot, plain)"], rows))
        print()


if __name__ == "__main__":
    main()
