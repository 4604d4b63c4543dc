"""``clipforge experiment objectives``: the CLIP paper's objective comparison (Figure 2) on your data,
a thin layer over :func:`clipforge.training.objectives.compare_objectives`."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="rerun the CLIP paper's experiments on your data")
    esub = p.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    o = esub.add_parser("objectives", help="contrastive vs bag-of-words vs caption prediction: zero-shot accuracy "
                        "against images seen at the same training budget (the paper's Figure 2)")
    o.add_argument("--data", required=True, help="training pairs (CSV/TSV, folder or shards), or a folder written by "
                   "'clipforge data synth' (its train.csv and zeroshot_seen.csv)")
    o.add_argument("--zeroshot", default=None, help="labelled images (CSV: image,label) for the zero-shot curve "
                   "(default with a synth folder: its zeroshot_seen.csv)")
    o.add_argument("--budget-minutes", type=float, default=5.0, help="training minutes per objective; evaluation "
                   "pauses the clock (default: 5)")
    o.add_argument("--objectives", default=",".join(("contrastive", "bag_of_words", "caption")),
                   help="comma-separated subset of contrastive,bag_of_words,caption")
    o.add_argument("--model", default="coca-tiny", help="named model config; a CoCa's (default: coca-tiny) gives "
                   "the three objectives exactly the same image tower")
    o.add_argument("--templates", default=None, help="template set name, file or one template (default: the "
                   "synthetic scenes' templates with a synth folder, else 'a photo of a {c}.')")
    o.add_argument("--classes", default=None, help="class names: 'a,b,c' or a file (default: the zero-shot labels)")
    o.add_argument("--eval-per-class", type=int, default=5, help="zero-shot images per class for the curve (0: all)")
    o.add_argument("--eval-every-steps", type=int, default=20)
    o.add_argument("--batch-size", type=int, default=128)
    o.add_argument("--lr", type=float, default=1e-3)
    o.add_argument("--seeds", default="0", help="comma-separated seeds: one run per objective and seed, the curves "
                   "averaged (default: 0)")
    o.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="any other option of the experiment's config (e.g. overrides.vision.image_size=32)")
    o.add_argument("--out", default="runs/objectives", help="output folder (default: runs/objectives)")
    o.add_argument("--no-progress", action="store_true")
    o.set_defaults(func=run_objectives)


def run_objectives(args: argparse.Namespace) -> int:
    from clipforge.config import apply_overrides
    from clipforge.errors import ClipforgeError
    from clipforge.evaluation.templates import get_templates, load_classnames
    from clipforge.training.objectives import LABELS, ObjectivesConfig, compare_objectives

    data = Path(args.data)
    synth_folder = data.is_dir() and (data / "train.csv").is_file()
    train = str(data / "train.csv") if synth_folder else args.data
    zeroshot = args.zeroshot or (str(data / "zeroshot_seen.csv") if synth_folder else None)
    if not zeroshot:
        raise ClipforgeError("--zeroshot: give the labelled images (CSV with image and label columns) to score")
    if args.templates:
        templates = get_templates(args.templates)
    else:
        templates = get_templates("synthetic") if synth_folder else ["a photo of a {c}."]
    classes = load_classnames(args.classes)[0] if args.classes else []
    d = {"train": train, "zeroshot": zeroshot, "classes": classes, "templates": templates,
         "objectives": [o.strip() for o in args.objectives.split(",") if o.strip()], "model": args.model,
         "budget_minutes": args.budget_minutes, "eval_every_steps": args.eval_every_steps,
         "eval_per_class": args.eval_per_class, "batch_size": args.batch_size, "lr": args.lr,
         "seeds": _seeds(args.seeds),
         "out_dir": args.out}
    config = ObjectivesConfig.from_dict(apply_overrides(d, args.set))
    summary = compare_objectives(config, progress=not args.no_progress)
    for name, acc in summary["best"].items():
        print(f"{LABELS[name]}: best zero-shot top-1 {acc:.1%} (images seen per seed: "
              f"{', '.join(f'{n:,}' for n in summary['runs'][name]['images_seen'])})")
    for r in summary["ratios"]:
        if r["ratio"]:
            print(f"{r['a']} vs {r['b']}: {LABELS[r['faster']]} {r['ratio']:.1f}x more efficient "
                  f"(to {r['target_acc1']:.1%})")
    print(f"results: {Path(args.out) / 'objectives.md'}, {Path(args.out) / 'objectives.png'}")
    return 0


def _seeds(spec: str) -> list[int]:
    from clipforge.errors import ClipforgeError

    try:
        return [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise ClipforgeError(f"--seeds: expected comma-separated integers such as 0,1,2, got {spec!r}") from None
