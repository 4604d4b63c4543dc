"""Every captioner on one table: the synthetic scenes, the same data and CPU budget per method.

Trains the prefix captioners (clipcap, clipcap-frozen, capdec, decap) on the demo's training
captions with the demo's CLIP (``outputs/demo/run/model``, from ``make demo``), takes a CoCa trained
from scratch on the same data (``--coca``, e.g. from ``clipforge train model.name=coca-tiny ...``),
and scores each on the demo's validation images with ``evaluate_captioner``: BLEU-4, CIDEr-D,
CLIP-score from a *separate* judge CLIP (``--judge``: a CLIP none of the captioners uses), the scene
attributes on seen and held-out (colour, shape) combinations, training minutes and captions/s.
Without ``--coca`` / ``--judge`` it trains them first with the demo's recipe on the same data:
a ``coca-tiny`` for ``--coca-epochs`` and a judge (the demo's ViT variant, seed 1) for
``--judge-epochs``.

    .venv/bin/python bench/captioning.py --coca runs/coca/model --judge runs/judge/model
    .venv/bin/python bench/captioning.py --coca-epochs 8 --judge-epochs 8 --epochs 3   # everything
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def _train_clip(data: Path, run: Path, epochs: int, model: dict, seed: int) -> Path:
    """A CLIP (or CoCa) trained with the demo's recipe on ``data``; returns its model folder."""
    import dataclasses

    from clipforge.demo import demo_config
    from clipforge.training.config import TrainConfig
    from clipforge.training.trainer import train

    d = dataclasses.asdict(demo_config(data, run, epochs, model))
    d.update(seed=seed, eval_every_epochs=epochs)
    return train(TrainConfig.from_dict(d), progress=False).model_dir


def main() -> None:
    import clipforge
    from clipforge.captioning.config import CaptionTrainConfig
    from clipforge.captioning.evaluate import evaluate_captioner, load_judge
    from clipforge.captioning.train import train_captioner
    from clipforge.demo import DEMO_MODELS
    from clipforge.models.generation import GenerationConfig
    from common import machine, markdown_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", default="outputs/demo/run/model")
    parser.add_argument("--data", default="outputs/demo/data")
    parser.add_argument("--coca", default=None, help="a CoCa trained on the same data (its run folder's model)")
    parser.add_argument("--coca-epochs", type=int, default=8, help="without --coca: train one for this many epochs")
    parser.add_argument("--judge", default=None, help="a CLIP that no captioner here uses")
    parser.add_argument("--judge-epochs", type=int, default=8, help="without --judge: train one for this many epochs")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--methods", nargs="*", default=["clipcap", "clipcap-frozen", "capdec", "decap", "iterative"])
    parser.add_argument("--limit", type=int, default=300, help="validation images captioned")
    parser.add_argument("--attribute-images", type=int, default=150)
    parser.add_argument("--work", default=None)
    parser.add_argument("--reuse", action="store_true",
                        help="evaluate the captioners already trained in --work (their summary.json gives the minutes)")
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    work = Path(args.work or tempfile.mkdtemp(prefix="clipforge-bench-caption-"))
    data = Path(args.data)
    coca_path = Path(args.coca) if args.coca else _train_clip(data, work / "coca", args.coca_epochs,
                                                              {"name": "coca-tiny"}, seed=0)
    judge_path = Path(args.judge) if args.judge else _train_clip(data, work / "judge", args.judge_epochs,
                                                                 DEMO_MODELS["vit"], seed=1)
    judge = load_judge(judge_path, torch.device("cpu"))
    gen = GenerationConfig(strategy="beam", num_beams=4, max_len=30)
    models: dict[str, tuple] = {}
    for method in args.methods:
        if (work / method / "model" / "config.json").is_file() and args.reuse:
            summary = json.loads((work / method / "summary.json").read_text())
            minutes = summary["train_seconds"] / 60
            if method == "clipcap-frozen":
                minutes += json.loads((work / method / "lm" / "summary.json").read_text())["train_seconds"] / 60
            models[method] = (clipforge.load(work / method / "model"), minutes)
            continue
        cfg = CaptionTrainConfig.from_dict({"method": method, "clip": args.clip, "data": str(data / "train.csv"),
                                            "out_dir": str(work / method), "epochs": args.epochs,
                                            "batch_size": 64, "lr": 1e-3, "tensorboard": False,
                                            "lm": {"pretrain_epochs": args.epochs}})
        t0 = time.perf_counter()
        train_captioner(cfg, progress=False)
        minutes = (time.perf_counter() - t0) / 60
        models[method] = (clipforge.load(work / method / "model"), minutes)
    summary = json.loads((coca_path.parent / "summary.json").read_text())
    models["coca"] = (clipforge.load(coca_path), summary["train_seconds"] / 60)
    rows, details = [], {}
    for name, (model, minutes) in models.items():
        t0 = time.perf_counter()
        out = evaluate_captioner(model, str(data / "val.csv"), judge, gen, limit=args.limit,
                                 attribute_images=args.attribute_images)
        seconds = time.perf_counter() - t0
        m = out["metrics"]
        captioned = m["n_images"] + m["seen/n_images"] + m["heldout/n_images"] if "seen/n_images" in m else \
            m["n_images"]
        rows.append([name, f"{100 * m['bleu_4']:.1f}", f"{100 * m['cider_d']:.1f}", f"{m['clip_score']:.3f}",
                     f"{m.get('seen/colour_and_shape_acc', float('nan')):.1%}",
                     f"{m.get('heldout/colour_and_shape_acc', float('nan')):.1%}", f"{minutes:.1f}",
                     f"{captioned / seconds:.1f}"])
        details[name] = {**m, "examples": out["examples"][:3]}
        print(" | ".join(rows[-1]), flush=True)
    print(f"\n{args.limit} validation images, beam search 4; attributes on {args.attribute_images} one-object images "
          "per split; CLIP-score by the judge; captions/s over all captioning of the evaluation\n")
    print(markdown_table(["captioner", "BLEU-4", "CIDEr-D", "CLIP-S (judge)", "colour+shape seen",
                          "colour+shape held-out", "train min", "captions/s"], rows))
    (work / "results.json").write_text(json.dumps(details, indent=2, default=float))
    print(f"\ndetails: {work / 'results.json'}")


if __name__ == "__main__":
    main()
