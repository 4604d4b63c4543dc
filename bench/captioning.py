"""Every captioner on one table: the synthetic scenes, the same data and CPU budget per method.

Trains the prefix captioners (clipcap, clipcap-frozen, capdec, decap) and the iterative decoder's
language model on the demo's training captions with the demo's CLIP (``outputs/demo/run/model``,
from ``make demo``), each for the same wall-clock budget (``--minutes``, the engine's ``minutes=``:
the schedule is sized to the steps that fit), for each of ``--seeds``. The CoCa learns its CLIP and
its captioner together from scratch on the same pairs, so its budget is the demo CLIP's training
time plus ``--minutes``: the same total CPU as a captioner and the CLIP it reads. The iterative
captioner is also scored with MAGIC's token-level search (no extra training).

Each is scored on the demo's validation images with ``evaluate_captioner``: BLEU-4, CIDEr-D,
CLIP-score from a *separate* judge CLIP (``--judge``, or one trained here: the demo's ViT variant,
seed 1, ``--judge-epochs``), the scene attributes on seen and held-out (colour, shape)
combinations, training minutes and captions/s; mean and spread (half the range) over the seeds.

    .venv/bin/python bench/captioning.py --minutes 2 --seeds 0 1 --limit 150 --attribute-images 80
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


def _row(name: str, runs: list[dict]) -> list[str]:
    """Mean and spread (half the range) over seeds of each figure."""
    def fig(key: str, fmt: str, scale: float = 1.0) -> str:
        vals = [r[key] * scale for r in runs if key in r]
        if not vals:
            return "-"
        mean, spread = sum(vals) / len(vals), (max(vals) - min(vals)) / 2
        return format(mean, fmt) + (f" ± {format(spread, fmt)}" if len(vals) > 1 else "")

    return [name, fig("bleu_4", ".1f", 100), fig("cider_d", ".1f", 100), fig("clip_score", ".3f"),
            fig("seen/colour_and_shape_acc", ".1f", 100), fig("heldout/colour_and_shape_acc", ".1f", 100),
            fig("train_minutes", ".1f"), fig("captions_per_s", ".1f"), fig("steps", ".0f")]


def main() -> None:
    import dataclasses

    import clipforge
    from clipforge.captioning.config import CaptionTrainConfig
    from clipforge.captioning.evaluate import evaluate_captioner
    from clipforge.captioning.train import train_captioner
    from clipforge.demo import DEMO_MODELS
    from clipforge.evaluation.judge import load_judge
    from clipforge.models.generation import GenerationConfig
    from common import machine, markdown_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", default="outputs/demo/run/model")
    parser.add_argument("--data", default="outputs/demo/data")
    parser.add_argument("--judge", default=None, help="a CLIP that no captioner here uses")
    parser.add_argument("--judge-epochs", type=int, default=8, help="without --judge: train one for this many epochs")
    parser.add_argument("--minutes", type=float, default=2.0, help="wall-clock training budget of each captioner")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--coca-seeds", type=int, nargs="*", default=None, help="(default: --seeds)")
    parser.add_argument("--methods", nargs="*", default=["clipcap", "clipcap-frozen", "capdec", "decap", "iterative"])
    parser.add_argument("--limit", type=int, default=150, help="validation images captioned")
    parser.add_argument("--attribute-images", type=int, default=80)
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    work = Path(args.work or tempfile.mkdtemp(prefix="clipforge-bench-caption-"))
    data = Path(args.data)
    clip_summary = json.loads((Path(args.clip).parent / "summary.json").read_text())
    clip_minutes = clip_summary["train_seconds"] / 60  # its steps' time (its evaluations left out)
    judge_path = Path(args.judge) if args.judge else _train_clip(data, work / "judge", args.judge_epochs,
                                                                 DEMO_MODELS["vit"], seed=1)
    judge = load_judge(judge_path, torch.device("cpu"))
    gen = GenerationConfig(strategy="beam", num_beams=4, max_len=30)
    results: dict[str, list[dict]] = {}

    def score(name: str, model, minutes: float, steps: int) -> None:
        t0 = time.perf_counter()
        out = evaluate_captioner(model, str(data / "val.csv"), judge, gen, limit=args.limit,
                                 attribute_images=args.attribute_images)
        m = out["metrics"]
        captioned = m["n_images"] + m.get("seen/n_images", 0) + m.get("heldout/n_images", 0)
        m.update(train_minutes=minutes, steps=steps, captions_per_s=captioned / (time.perf_counter() - t0),
                 examples=out["examples"][:3])
        results.setdefault(name, []).append(m)
        print(" | ".join(_row(name, [m])), flush=True)

    for seed in args.seeds:
        for method in args.methods:
            out_dir = work / f"{method}-seed{seed}"
            cfg = CaptionTrainConfig.from_dict({"method": method, "clip": args.clip, "data": str(data / "train.csv"),
                                                "out_dir": str(out_dir), "epochs": 1000, "minutes": args.minutes,
                                                "batch_size": 64, "lr": 1e-3, "tensorboard": False, "seed": seed,
                                                "warmup_steps": 100, "lm": {"pretrain_epochs": 1000}})
            train_captioner(cfg, progress=False)
            summary = json.loads((out_dir / "summary.json").read_text())
            minutes, steps = summary["wall_seconds"] / 60, summary["steps"]
            if method == "clipcap-frozen":  # its language model's pretraining shared the budget
                lm = json.loads((out_dir / "lm" / "summary.json").read_text())
                minutes, steps = minutes + lm["wall_seconds"] / 60, steps + lm["steps"]
            model = clipforge.load(out_dir / "model")
            score(method, model, minutes, steps)
            if method == "iterative":  # the same language model and CLIP, MAGIC's token-level search
                model.config = dataclasses.replace(model.config, search="magic")
                score("iterative (MAGIC)", model, minutes, steps)
    for seed in args.coca_seeds if args.coca_seeds is not None else args.seeds:
        budget = clip_minutes + args.minutes
        d = dataclasses.asdict(_demo_config(data, work / f"coca-seed{seed}", {"name": "coca-tiny"}))
        d.update(seed=seed, epochs=1000, minutes=budget, eval_every_epochs=0)
        from clipforge.training.config import TrainConfig
        from clipforge.training.trainer import train

        path = train(TrainConfig.from_dict(d), progress=False).model_dir
        summary = json.loads((path.parent / "summary.json").read_text())
        score("coca", clipforge.load(path), summary["wall_seconds"] / 60, summary["steps"])
    print(f"\n{args.limit} validation images, beam search 4; attributes on {args.attribute_images} one-object images "
          f"per split; CLIP-score by the judge; captions/s over all captioning of the evaluation; seeds {args.seeds}; "
          f"budget {args.minutes} min per captioner, {clip_minutes:.1f} + {args.minutes} min for the CoCa\n")
    print(markdown_table(["captioner", "BLEU-4", "CIDEr-D", "CLIP-S (judge)", "colour+shape seen %",
                          "colour+shape held-out %", "train min", "captions/s", "steps"],
                         [_row(name, runs) for name, runs in results.items()]))
    (work / "results.json").write_text(json.dumps(results, indent=2, default=float))
    print(f"\ndetails: {work / 'results.json'}")


def _demo_config(data: Path, run: Path, model: dict):
    from clipforge.demo import demo_config

    return demo_config(data, run, 1, model)


if __name__ == "__main__":
    main()
