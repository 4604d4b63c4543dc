"""``clipforge train``: train a CLIP model from a YAML/JSON config with key=value overrides."""

from __future__ import annotations

import argparse

from clipforge.training.config import TrainConfig, apply_overrides, describe


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune a CLIP model on image-text pairs",
        description="Train a CLIP model. Options come from --config (YAML or JSON) and from key=value "
        "overrides, e.g. `clipforge train --config c.yaml optim.lr=1e-4 epochs=5`. "
        "`clipforge train --help-config` lists every option.",
    )
    p.add_argument("--config", help="YAML or JSON file of options")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="option overrides (section.key=value)")
    p.add_argument("--resume", metavar="latest|CHECKPOINT", help="continue from a checkpoint of the run in out_dir")
    p.add_argument("--help-config", action="store_true", help="list every option with its default and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.help_config:
        for name, default, help_text in describe(TrainConfig):
            print(f"{name:28s} {default:22s} {help_text}")
        return 0
    if args.config:
        config = TrainConfig.load(args.config, args.overrides)
    else:
        config = TrainConfig.from_dict(apply_overrides({}, args.overrides))
    from clipforge.training.trainer import train

    result = train(config, resume=args.resume, progress=not args.no_progress)
    print(f"model saved to {result.model_dir}")
    return 0
