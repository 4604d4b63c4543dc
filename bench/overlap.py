"""Does the duplicate detector find the duplicates? A test set with a known share of near-duplicates.

Training set: ``--train`` scenes of the demo's training split. Test set: ``--test`` images of which
``--dup-share`` are near-duplicates of training images (rescaled, trimmed, a brightness change, JPEG
re-encoding: :func:`plant_duplicates` with a different draw from the calibration's) and the rest validation scenes
never trained on. Reported for the old fixed threshold 0.95 and for the calibrated one: the share
flagged against the truth, and precision and recall of the flags.

    .venv/bin/python bench/overlap.py --model outputs/demo/run/model --data outputs/demo/data
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    from clipforge.checkpoints import load
    from clipforge.evaluation.cache import image_features
    from clipforge.evaluation.overlap import calibrate_threshold, nearest_train, pixel_signatures, plant_duplicates
    from common import machine, markdown_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/demo/run/model")
    parser.add_argument("--data", default="outputs/demo/data")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--dup-share", type=float, default=0.44)
    parser.add_argument("--plant", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"machine: {machine()}; model {args.model}\n")
    tmp = Path(tempfile.mkdtemp(prefix="clipforge-overlap-"))
    os.environ["CLIPFORGE_CACHE"] = str(tmp / "cache")
    data = Path(args.data)

    def images(split: str) -> list[str]:
        with open(data / f"{split}.csv") as f:
            return [str(data / r["image"]) for r in csv.DictReader(f)]

    rng = random.Random(1)
    train = images("train")[: args.train]
    n_dup = round(args.test * args.dup_share)
    dups = plant_duplicates(rng.sample(train, n_dup), tmp / "test-dups", seed=123)
    test = dups + images("val")[: args.test - n_dup]
    truth = torch.tensor([True] * n_dup + [False] * (args.test - n_dup))

    model = load(args.model)
    embedders = {"model": lambda paths: image_features(model, paths, use_cache=False, progress=False)[0],
                 "pixels": pixel_signatures}
    rows, sweeps = [], {}
    for features, embed in embedders.items():
        xtr, xte = embed(train), embed(test)
        # The calibration as `clipforge eval overlap` does it: planted copies of reference images against
        # training images held out of the reference set.
        order = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(0))
        held, ref = order[: args.plant], order[args.plant :]
        planted = embed(plant_duplicates([train[int(i)] for i in ref[: args.plant]], tmp / f"cal-{features}"))
        threshold, sweeps[features] = calibrate_threshold(nearest_train(planted, xtr[ref])[1],
                                                          nearest_train(xtr[held], xtr[ref])[1])
        _, sims = nearest_train(xte, xtr)
        choices = (("fixed 0.95 (the old default)", 0.95),) if features == "model" else ()
        for name, t in (*choices, (f"calibrated: {threshold}", threshold)):
            flagged = sims >= t
            tp = int((flagged & truth).sum())
            rows.append([features, name, f"{float(flagged.float().mean()):.3f}", f"{float(truth.float().mean()):.3f}",
                         f"{int((flagged & ~truth).sum())} of {int((~truth).sum())}",
                         f"{tp / max(1, int(flagged.sum())):.3f}", f"{tp / max(1, n_dup):.3f}"])
    print(markdown_table(["features", "threshold", "overlap reported", "true overlap", "clean images flagged",
                          "precision", "recall"], rows))
    for features, table in sweeps.items():
        print(f"\ncalibration sweep, {features} (planted near-duplicates vs held-out training images):\n")
        shown = [r for r in table if r["threshold"] in (0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99, 0.995)]
        print(markdown_table(["threshold", "recall", "clean flagged", "precision"],
                             [[r["threshold"], f"{r['recall']:.3f}", f"{r['clean_flagged']:.3f}",
                               f"{r['precision']:.3f}"] for r in shown]))


if __name__ == "__main__":
    main()
