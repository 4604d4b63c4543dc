"""``clipforge ssl train``: SimCLR, BYOL or SimSiam pretraining of an image encoder."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from clipforge.cli.options import add_run_options
    from clipforge.config import choices
    from clipforge.ssl.config import SSLConfig

    p = sub.add_parser("ssl", help="self-supervised image pretraining (SimCLR, BYOL, SimSiam)")
    ssub = p.add_subparsers(dest="ssl_command", required=True, metavar="SSL_COMMAND")
    t = ssub.add_parser("train", help="pretrain an image encoder without labels",
                        description="Options from --config (YAML/JSON) and key=value overrides; --help-config lists "
                        "them. The encoder is saved to OUT_DIR/encoder.")
    t.add_argument("--method", choices=choices(SSLConfig, "method"), default=None)
    add_run_options(t)
    t.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from clipforge.cli.options import overrides_with_flags, print_config_help
    from clipforge.ssl.config import SSLConfig

    if args.help_config:
        return print_config_help(SSLConfig)
    overrides = overrides_with_flags(args, ("method",))
    cfg = SSLConfig.load(args.config, overrides)
    from clipforge.ssl.trainer import train_ssl

    train_ssl(cfg, resume=args.resume, progress=not args.no_progress)
    print(f"encoder saved to {cfg.out_dir}/encoder")
    return 0
