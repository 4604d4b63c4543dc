"""``clipforge ssl train``: SimCLR, BYOL or SimSiam pretraining of an image encoder."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from clipforge.config import choices
    from clipforge.ssl.config import SSLConfig

    p = sub.add_parser("ssl", help="self-supervised image pretraining (SimCLR, BYOL, SimSiam)")
    ssub = p.add_subparsers(dest="ssl_command", required=True, metavar="SSL_COMMAND")
    t = ssub.add_parser("train", help="pretrain an image encoder without labels",
                        description="Options from --config (YAML/JSON) and key=value overrides; --help-config lists "
                        "them. The encoder is saved to OUT_DIR/encoder.")
    t.add_argument("--method", choices=choices(SSLConfig, "method"), default=None)
    t.add_argument("--config", default=None)
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    t.add_argument("--resume", default=None, metavar="latest|CHECKPOINT")
    t.add_argument("--help-config", action="store_true")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from clipforge.config import describe
    from clipforge.ssl.config import SSLConfig

    if args.help_config:
        for name, default, help_text in describe(SSLConfig):
            print(f"{name:26s} {default:28s} {help_text}")
        return 0
    overrides = list(args.overrides)
    if args.method:
        from clipforge.config import apply_overrides, read_config_file
        from clipforge.errors import ConfigError

        given = apply_overrides(read_config_file(args.config) if args.config else {}, overrides).get("method")
        if given is not None and given != args.method:
            where = "the overrides" if any(o.startswith("method=") for o in overrides) else args.config
            raise ConfigError(f"--method {args.method} conflicts with method={given} ({where}); give one")
        overrides.append(f"method={args.method}")
    cfg = SSLConfig.load(args.config, overrides)
    from clipforge.ssl.trainer import train_ssl

    train_ssl(cfg, resume=args.resume, progress=not args.no_progress)
    print(f"encoder saved to {cfg.out_dir}/encoder")
    return 0
