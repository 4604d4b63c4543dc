"""``clipforge train``: train a CLIP model from a YAML/JSON config with key=value overrides."""

from __future__ import annotations

import argparse

from clipforge.cli.options import add_run_options, print_config_help
from clipforge.training.config import TrainConfig, apply_overrides


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train or fine-tune a CLIP model on image-text pairs",
        description="Train a CLIP model. Options come from --config (YAML or JSON) and from key=value "
        "overrides, e.g. `clipforge train --config c.yaml optim.lr=1e-4 epochs=5`. "
        "`clipforge train --help-config` lists every option.",
    )
    add_run_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.help_config:
        return print_config_help(TrainConfig)
    if args.config:
        config = TrainConfig.load(args.config, args.overrides)
    else:
        config = TrainConfig.from_dict(apply_overrides({}, args.overrides))
    from clipforge.training.trainer import train

    result = train(config, resume=args.resume, progress=not args.no_progress)
    print(f"model saved to {result.model_dir}")
    return 0
