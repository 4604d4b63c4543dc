"""Entry point of the ``clipforge`` command.

Each sub-command lives in its own module with ``add_parser(subparsers)`` and a ``run(args)``
function that calls the library. A :class:`~clipforge.errors.ClipforgeError` is a user's mistake
and is printed as one line; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from clipforge.cli import (
    bind,
    caption,
    convert,
    data,
    demo,
    evaluate,
    experiment,
    explain,
    export,
    generate,
    info,
    search,
    ssl,
    text,
    train,
    word2vec,
)


def _set_threads() -> None:
    # More torch threads than free cores makes small ops much slower on a shared machine:
    # default to the cores we may use, capped at 4 unless the user says otherwise.
    import torch

    n = os.environ.get("CLIPFORGE_THREADS")
    torch.set_num_threads(int(n) if n else max(1, min(4, len(os.sched_getaffinity(0)))))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipforge",
        description="Contrastive multimodal learning around CLIP: models, conversion, training, "
        "evaluation and search.",
    )
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: $CLIPFORGE_THREADS or min(4, cores))")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (demo, train, data, evaluate, experiment, export, explain, caption, generate, ssl, search, convert,
                   info, text, word2vec, bind):
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from clipforge.errors import ClipforgeError

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["caption", "train"]:  # "caption" takes image paths; "caption train" is its own command
        argv = ["caption-train", *argv[2:]]
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be at least 1, got {args.threads}")
        os.environ["CLIPFORGE_THREADS"] = str(args.threads)
    _set_threads()
    try:
        return int(args.func(args) or 0)
    except ClipforgeError as e:
        print(f"clipforge: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clipforge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
