"""``clipforge convert SRC DST``: any supported checkpoint -> clipforge, open_clip or HF."""

from __future__ import annotations

import argparse

from clipforge.checkpoints import export_hf, export_openclip, load, save

FORMATS = ("clipforge", "open_clip", "hf")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert a checkpoint (clipforge, open_clip, OpenAI, Hugging Face) to another format",
        description="Read SRC in any supported format and write DST as a folder in --to format.",
    )
    p.add_argument("src", help="checkpoint file or folder")
    p.add_argument("dst", help="output folder")
    p.add_argument("--to", choices=FORMATS, default="clipforge",
                   help="output format (default: clipforge)")
    p.add_argument("--config", default=None,
                   help="model config for sources without one: a named config (e.g. ViT-B-32) "
                   "or a JSON file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = load(args.src, config=args.config)
    writer = {"clipforge": save, "open_clip": export_openclip, "hf": export_hf}[args.to]
    out = writer(model, args.dst)
    print(f"wrote {args.to} checkpoint to {out}")
    return 0
