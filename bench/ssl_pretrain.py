"""Self-supervised encoders after a fixed CPU budget: kNN and linear-probe accuracy over seeds.

Each recipe (a named set of `clipforge ssl train` options) pretrains the same encoder (the small-stem
modified ResNet, width 16, one block per stage, 32 px, 128-d) for the same minutes (the engine sizes
the schedule to the budget), once per seed; the encoder is then scored by weighted kNN (k = 200,
T = 0.1) and the CLIP-paper linear probe, fit on the evaluation set's training split and scored on
its held-out split. Every figure is the mean and the sample standard deviation over the seeds.

Datasets: ``digits`` (scikit-learn's digits, 1,257 / 540) and ``objects`` (the synthetic scenes'
objects cut out at their grid cells; scored by shape and by colour, 896 / 384). ``synthetic`` (whole
scenes by shape) is the old, near-chance task. Floors in the same run: raw pixels, and the encoder
at random initialisation (over the same seeds).

``--lightly DIR`` adds rows for encoders trained by ``bench/ssl_lightly.py`` (lightly's SimCLR:
its transforms, projection head, loss and LARS recipe on this same encoder, run from a separate
environment with torchvision), scored here by the same code.

    .venv/bin/python bench/ssl_pretrain.py                                  # every recipe, 3 seeds, 2 min each
    .venv/bin/python bench/ssl_pretrain.py --datasets digits --recipes simclr clipforge --seeds 1
    .venv/bin/python bench/ssl_pretrain.py --recipes simclr "clipforge:batch_size=256"   # a known recipe, changed
    .venv/bin/python bench/ssl_pretrain.py --datasets objects --seeds 0 --ceiling-seeds 1  # trained with the labels
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

# SimCLR as the paper and clipforge's defaults give it; clipforge's recipe for small images on a CPU
# (bf16 autocast and channels-last buy about 3x the steps on a CPU with AVX512-BF16; LARS, tau 0.2,
# crops of at least a quarter of the image, no blur and batches of 128 learn more from them: see
# docs/benchmarks.md); BYOL and SimSiam with the papers' heads at the same speed settings.
FAST = {"precision": "bf16", "channels_last": True}
RECIPES: dict[str, dict[str, Any]] = {
    "simclr": {"method": "simclr"},
    "clipforge": {"method": "simclr", **FAST, "optimizer": "lars", "temperature": 0.2, "batch_size": 128,
                  "augment": {"crop_scale": [0.25, 1.0], "blur_p": 0.0}},
    "byol": {"method": "byol", **FAST},
    "simsiam": {"method": "simsiam", **FAST},
}
DATASETS = ("digits", "objects", "synthetic")


def parse_recipe(text: str) -> tuple[str, dict[str, Any]]:
    """``name`` (one of RECIPES) or ``name:key=value,key=value`` (values read as YAML; a.b=1 nests; a known
    name is the base the values change). Returns the label (the text itself) and the options."""
    if ":" not in text:
        if text not in RECIPES:
            raise SystemExit(f"unknown recipe {text!r}; known: {', '.join(RECIPES)} (or name:key=value,...)")
        return text, RECIPES[text]
    from clipforge.config import apply_overrides

    name, spec = text.split(":", 1)
    base = dict(RECIPES.get(name, {}))
    return text, apply_overrides(base, [kv for kv in re.split(r",(?![^\[]*\])", spec) if kv])


def summary(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1%}"
    return f"{statistics.mean(values):.1%} ± {statistics.stdev(values):.1%}"


def main() -> None:
    from clipforge.data.datasets import pixel_features
    from clipforge.evaluation.linear_probe import linear_probe
    from clipforge.models.towers import build_image_tower
    from clipforge.ssl.config import SSLConfig
    from clipforge.ssl.data import labelled_sets, scored_sets
    from clipforge.ssl.knn import knn_accuracy
    from clipforge.ssl.trainer import encoder_config, train_ssl
    from common import machine

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=2.0, help="training budget per run")
    parser.add_argument("--datasets", nargs="+", default=["digits", "objects"], choices=DATASETS)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ceiling-seeds", type=int, default=0,
                        help="also train the encoder with the labels for the same minutes (a ceiling), this many seeds")
    parser.add_argument("--lightly", type=Path, help="folder of bench/ssl_lightly.py's encoders")
    parser.add_argument("--out", type=Path, help="write every per-seed figure here (JSON)")
    args = parser.parse_args()
    recipes = [parse_recipe(r) for r in args.recipes]
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}; {args.threads} threads; budget {args.minutes} min per run; "
          f"{args.seeds} seeds\n", flush=True)
    work = Path(tempfile.mkdtemp(prefix="clipforge-ssl-"))
    results: list[dict[str, Any]] = []

    def record(ds: str, features: str, seed: int, scores: dict[str, float], **extra: Any) -> None:
        results.append({"dataset": ds, "features": features, "seed": seed, **scores, **extra})
        print(json.dumps(results[-1]), flush=True)

    for ds in args.datasets:
        evals = list(scored_sets(ds).values())
        scores: dict[str, float] = {}
        for ev in evals:
            train, test = labelled_sets(ev)
            ytr, yte = torch.tensor(train.labels), torch.tensor(test.labels)
            xtr, _ = pixel_features(train.images)
            xte, _ = pixel_features(test.images)
            scores[f"{ev}/knn"] = knn_accuracy(xtr, ytr, xte, yte, n_classes=len(train.classes))
            scores[f"{ev}/lp"] = linear_probe(xtr, ytr, xte, yte, n_classes=len(train.classes))["lp_acc1"]
        record(ds, "raw pixels (32x32x3)", 0, scores)
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            encoder = build_image_tower(encoder_config(SSLConfig.from_dict({"method": "simclr"})))
            record(ds, "random-init encoder", seed, evaluate_all(encoder, evals))
        for name, overrides in recipes:
            for seed in range(args.seeds):
                cfg = SSLConfig.from_dict({
                    "data": ds, "image_size": 32, "embed_dim": 128, "epochs": 100_000, "minutes": args.minutes,
                    "eval_every_steps": 0, "eval_linear_probe": False, "tensorboard": False,
                    "threads": args.threads, "seed": seed, **overrides,
                    "out_dir": str(work / f"{ds}-{name}-{seed}")})
                encoder, state = train_ssl(cfg, progress=False)
                run = json.loads((Path(cfg.out_dir) / "summary.json").read_text())
                record(ds, name, seed, evaluate_all(encoder, evals), steps=state.step,
                       minutes=round(state.train_seconds / 60, 2), schedule_steps=run["schedule_steps"],
                       warmup_steps=run["warmup_steps"], recipe=overrides)
        for seed in range(args.ceiling_seeds):
            for ev in evals:
                scores = supervised_ceiling(ev, seed, args.minutes)
                record(ds, f"supervised on {ev} (ceiling)", seed, {k: v for k, v in scores.items() if k != "steps"},
                       steps=scores["steps"])
        if args.lightly:
            for meta_file in sorted(args.lightly.glob(f"{ds}-*/meta.json")):
                meta = json.loads(meta_file.read_text())
                encoder = load_lightly_encoder(meta_file.parent, encoder_config(SSLConfig.from_dict({})))
                record(ds, meta["label"], meta["seed"], evaluate_all(encoder, evals),
                       steps=meta["steps"], minutes=round(meta["seconds"] / 60, 2), recipe=meta["recipe"])
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    print()
    print(table(results))


def supervised_ceiling(ev: str, seed: int, minutes: float) -> dict[str, float]:
    """The same encoder trained with the labels of ``ev``'s training split (cross-entropy through a linear
    head, random crops of at least half the image, AdamW 1e-3) for ``minutes``, then scored like the others:
    how far this encoder can go on the task when it is told what matters."""
    import time

    from clipforge.data.images import ImageDataset, Uint8Crop, collate_images
    from clipforge.models.towers import build_image_tower
    from clipforge.ssl.augment import AugmentConfig, ViewAugment
    from clipforge.ssl.config import SSLConfig
    from clipforge.ssl.data import labelled_sets
    from clipforge.ssl.trainer import encoder_config, normalise

    train, _ = labelled_sets(ev)
    batch = next(iter(torch.utils.data.DataLoader(ImageDataset(train.images, Uint8Crop(32)), batch_size=len(train),
                                                  collate_fn=collate_images)))
    x, y = batch.images.float() / 255, torch.tensor(train.labels)[batch.indices]
    torch.manual_seed(seed)
    encoder = build_image_tower(encoder_config(SSLConfig.from_dict({})))
    head = torch.nn.Linear(128, len(train.classes))
    opt = torch.optim.AdamW(list(encoder.parameters()) + list(head.parameters()), lr=1e-3)
    augment = ViewAugment(32, AugmentConfig((0.5, 1.0), jitter_p=0, greyscale_p=0, blur_p=0))
    start, step = time.time(), 0
    while time.time() - start < minutes * 60:
        idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed * 100_003 + step))[:128]
        with torch.autocast("cpu", torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(head(encoder(normalise(augment(x[idx], seed=step)))), y[idx])
        opt.zero_grad()
        loss.float().backward()
        opt.step()
        step += 1
    return {**evaluate_all(encoder, [ev]), "steps": step}


def evaluate_all(encoder: torch.nn.Module, evals: list[str]) -> dict[str, float]:
    from clipforge.ssl.trainer import evaluate_encoder

    out = {}
    for ev in evals:
        m = evaluate_encoder(encoder, ev, 32)
        out[f"{ev}/knn"], out[f"{ev}/lp"] = m["knn_acc1"], m["lp_acc1"]
    return out


def load_lightly_encoder(folder: Path, config) -> torch.nn.Module:  # noqa: ANN001
    from safetensors.torch import load_file

    from clipforge.models.towers import build_image_tower

    encoder = build_image_tower(config)
    encoder.load_state_dict(load_file(str(folder / "encoder.safetensors")))
    return encoder


def table(results: list[dict[str, Any]]) -> str:
    from common import markdown_table

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["dataset"], r["features"]), []).append(r)
    columns = sorted({k for r in results for k in r if "/" in k}, key=lambda k: (k.split("/")[0] != "digits", k))
    rows = []
    for (ds, features), rs in groups.items():
        steps = [r["steps"] for r in rs if "steps" in r]
        rows.append([ds, features, len(rs), f"{statistics.mean(steps):.0f}" if steps else "-",
                     *[summary([r[c] for r in rs]) if c in rs[0] else "" for c in columns]])
    return markdown_table(["dataset", "features", "seeds", "steps", *columns], rows)


if __name__ == "__main__":
    main()
