"""What every training command shares: a config file, key=value overrides, resume, --help-config,
and flags that are shortcuts for options (refused when they contradict the config)."""

from __future__ import annotations

import argparse


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML or JSON file of options")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="option overrides (section.key=value)")
    p.add_argument("--resume", default=None, metavar="latest|CHECKPOINT",
                   help="continue from a checkpoint of the run in out_dir")
    p.add_argument("--help-config", action="store_true", help="list every option with its default and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def print_config_help(klass: type) -> int:
    from clipforge.config import describe

    rows = describe(klass)
    width = max(len(name) for name, _, _ in rows) + 2
    for name, default, help_text in rows:
        print(f"{name:{width}s} {default:22s} {help_text}")
    return 0


def overrides_with_flags(args: argparse.Namespace, flags: tuple[str, ...]) -> list[str]:
    """The overrides plus ``flag=value`` for each flag given; a flag that contradicts the config file
    or an override is a one-line error (``--method byol`` with ``method=simclr``)."""
    from clipforge.config import apply_overrides, read_config_file
    from clipforge.errors import ConfigError

    overrides = list(args.overrides)
    given = apply_overrides(read_config_file(args.config) if args.config else {}, overrides)
    for flag in flags:
        value = getattr(args, flag)
        if value is None:
            continue
        if given.get(flag) is not None and given[flag] != value:
            where = "the overrides" if any(o.startswith(f"{flag}=") for o in overrides) else args.config
            raise ConfigError(f"--{flag} {value} conflicts with {flag}={given[flag]} ({where}); give one")
        overrides.append(f"{flag}={value}")
    return overrides
