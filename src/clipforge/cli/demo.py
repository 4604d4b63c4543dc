"""``clipforge demo``: the main job on the embedded synthetic data (what ``make demo`` runs)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="generate synthetic data, train a small CLIP on the CPU, evaluate, write a report")
    p.add_argument("--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    p.add_argument("--epochs", type=int, help="epochs of the CLIP (default: clipforge.demo.DEMO_EPOCHS, 15)")
    p.add_argument("--train", type=int, default=10000, help="training scenes")
    p.add_argument("--val", type=int, default=1000, help="validation scenes")
    p.add_argument("--zeroshot-per-class", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-tower", choices=["resnet", "vit"], default="resnet",
                   help="the small modified ResNet (default) or a small ViT (64 px, 8 px patches)")
    p.add_argument("--caption-epochs", type=int, default=2,
                   help="epochs of the ClipCap captioner whose captions the report shows (0: none; default: 2)")
    p.add_argument("--generation", action="store_true",
                   help="instead: text-to-image over the demo's CLIP (reused when make demo made it): a DDPM "
                        "trained for --generation-minutes, judged by a separate CLIP, with an HTML report")
    p.add_argument("--generation-minutes", type=float, default=10.0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipforge.data.synthetic import SynthConfig
    from clipforge.demo import DEMO_MODELS, demo_summary, run_demo

    synth = SynthConfig(seed=args.seed, n_train=args.train, n_val=args.val,
                        n_zeroshot_per_class=args.zeroshot_per_class)
    if args.generation:
        from clipforge.demo import run_generation_demo

        m = run_generation_demo(args.out, args.generation_minutes, progress=not args.no_progress, synth=synth)
        for split in ("seen", "heldout"):
            print(f"{split}: CLIP-score {m[split]['clip_score']:.1f} (real {m['ceiling'][split]['clip_score']:.1f}), "
                  f"R-precision {m[split]['r_precision']:.1%}, colour+shape read back "
                  f"{m[split]['colour_and_shape_acc']:.1%} (real {m['ceiling'][split]['colour_and_shape_acc']:.1%})")
        print(f"report: {m['report']}")
        return 0
    results = run_demo(args.out, synth, **({"epochs": args.epochs} if args.epochs else {}),
                       progress=not args.no_progress, model=DEMO_MODELS[args.image_tower],
                       caption_epochs=args.caption_epochs)
    print()
    print(demo_summary(results))
    return 0
