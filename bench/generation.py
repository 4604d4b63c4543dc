"""Text-to-image on the synthetic scenes: DDPM with classifier-free guidance against unCLIP, the
same data and CPU budget, judged by a CLIP neither uses.

Trains, for ``--minutes`` each (the engine's ``minutes=``: the schedule is sized to it), a
text-conditioned DDPM and an unCLIP (prior + image-embedding decoder) over the demo's CLIP
(``outputs/demo/run/model``) on the demo's 10,000 training scenes at ``--size`` px; then scores
each with ``evaluate_generator`` under the judge (``--judge``: the demo's ViT variant trained with
seed 1, as bench/captioning.py trains it): guidance 0 (the unconditional floor), 1, 3 and 5, CLIP
re-ranking of 4x the samples by the generator's own CLIP at guidance 3 (DDPM), and unCLIP without
its prior. A third run, the DDPM with the paper's target (the noise, plain MSE) instead of the
default v-prediction with min-SNR weighting, is scored at guidance 3. The real images under the
same judge are the ceiling.

    .venv/bin/python bench/generation.py --judge /tmp/capbench2/judge/model --minutes 10 -n 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    import torch

    import clipforge
    from clipforge.evaluation.judge import load_judge
    from clipforge.generation.config import GenerationTrainConfig
    from clipforge.generation.evaluate import evaluate_generator
    from clipforge.generation.sample import SampleOptions
    from clipforge.generation.train import train_generator
    from common import machine, markdown_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", default="outputs/demo/run/model")
    parser.add_argument("--data", default="outputs/demo/data")
    parser.add_argument("--judge", required=True)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("-n", type=int, default=4, help="samples per prompt (64 prompts)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--work", default=None)
    parser.add_argument("--reuse", action="store_true", help="evaluate the generators already in --work")
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    work = Path(args.work or tempfile.mkdtemp(prefix="clipforge-bench-gen-"))
    judge = load_judge(args.judge, torch.device("cpu"))
    rows, details = [], {}

    def score(name: str, model, minutes: float, steps: int, **opts) -> None:
        o = SampleOptions(n=args.n, steps=args.steps, **opts)
        m = evaluate_generator(model, args.data, judge, o, out_dir=work / "reports" / name.replace(" ", "_"))
        details[name] = m
        rows.append([name, *(f"{m[s]['clip_score']:.1f}" for s in ("seen", "heldout")),
                     *(f"{100 * m[s]['r_precision']:.1f}" for s in ("seen", "heldout")),
                     *(f"{100 * m[s]['colour_and_shape_acc']:.1f}" for s in ("seen", "heldout")),
                     f"{100 * m['seen']['size_acc']:.0f} / {100 * m['seen']['position_acc']:.0f}",
                     f"{m['frechet_distance']:.3f}", f"{minutes:.1f}", steps])
        print(" | ".join(str(c) for c in rows[-1]), flush=True)

    # name -> (method, schedule options); the last is the DDPM paper's recipe (eps target, plain MSE)
    runs = {"ddpm": ("ddpm", {}), "unclip": ("unclip", {}),
            "ddpm-epsilon": ("ddpm", {"prediction": "epsilon", "snr_gamma": 0.0})}
    for name, (method, schedule) in runs.items():
        out = work / name
        if not (args.reuse and (out / "model" / "config.json").is_file()):
            cfg = GenerationTrainConfig.from_dict({
                "method": method, "clip": args.clip, "data": str(Path(args.data) / "train.csv"),
                "out_dir": str(out), "epochs": 1000, "minutes": args.minutes, "image_size": args.size,
                "batch_size": 64, "lr": 5e-4, "tensorboard": False, "seed": 0, "schedule": schedule})
            train_generator(cfg, progress=False)
        summary = json.loads((out / "summary.json").read_text())
        minutes, steps = summary["wall_seconds"] / 60, summary["steps"]
        if method == "unclip":
            prior = json.loads((out / "prior" / "summary.json").read_text())
            minutes, steps = minutes + prior["wall_seconds"] / 60, steps + prior["steps"]
        model = clipforge.load(out / "model")
        if name == "ddpm-epsilon":  # an ablation of the target: one row
            score("ddpm guidance 3, epsilon target, no min-SNR", model, minutes, steps, guidance=3.0)
            continue
        for g in (0.0, 1.0, 3.0, 5.0):
            score(f"{method} guidance {g:g}", model, minutes, steps, guidance=g)
        if method == "ddpm":  # re-ranking is the same option for both; measured once (it costs 4x the sampling)
            score(f"{method} guidance 3, re-ranked 4x", model, minutes, steps, guidance=3.0, rerank=4)
        else:
            score("unclip guidance 3, no prior", model, minutes, steps, guidance=3.0, use_prior=False)
    ceiling = details[next(iter(details))]["ceiling"]
    rows.append(["real images (ceiling)", *(f"{ceiling[s]['clip_score']:.1f}" for s in ("seen", "heldout")),
                 "-", "-", *(f"{100 * ceiling[s]['colour_and_shape_acc']:.1f}" for s in ("seen", "heldout")),
                 f"{100 * ceiling['seen']['size_acc']:.0f} / {100 * ceiling['seen']['position_acc']:.0f}", "-", "-",
                 "-"])
    print()
    print(markdown_table(["generator", "CLIP-S seen", "CLIP-S held-out", "R-prec seen %", "R-prec held-out %",
                          "colour+shape seen %", "colour+shape held-out %", "size / position seen %",
                          "Frechet (judge)", "train min", "steps"], rows))
    (work / "results.json").write_text(json.dumps(details, indent=2, default=float))
    print(f"\ndetails and HTML reports: {work}")


if __name__ == "__main__":
    main()
