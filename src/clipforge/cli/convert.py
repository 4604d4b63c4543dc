"""``clipforge convert SRC DST``: any supported checkpoint -> clipforge, open_clip or HF."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipforge.checkpoints import export_hf, export_openclip, load, save
from clipforge.errors import ClipforgeError
from clipforge.images.preprocess import OPENAI_MEAN, OPENAI_STD

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
    p.add_argument("--layout", choices=("flat", "hub"), default="flat",
                   help="open_clip only: 'flat' (NAME.json that open_clip.add_model_config registers, + "
                   "NAME.safetensors; NAME is the output folder's name) or 'hub' (open_clip_config.json + "
                   "open_clip_model.safetensors, for create_model('local-dir:DST'))")
    p.add_argument("--overwrite", action="store_true", help="write into DST even if it already holds files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    dst = Path(args.dst)
    if dst.exists() and not dst.is_dir():
        raise ClipforgeError(f"{dst}: exists and is not a folder; choose another output folder")
    if dst.is_dir() and any(dst.iterdir()) and not args.overwrite:
        raise ClipforgeError(f"{dst}: output folder already holds files; pass --overwrite to replace them")
    model = load(args.src, config=args.config)
    if args.to == "open_clip":
        out = export_openclip(model, dst, layout=args.layout)
    else:
        out = {"clipforge": save, "hf": export_hf}[args.to](model, dst)
    print(f"wrote {args.to} checkpoint to {out}")
    if args.to == "open_clip" and args.layout == "flat":
        name = out.resolve().name
        print(f"in open_clip: add_model_config('{out}/{name}.json'); "
              f"create_model('{name}', pretrained='{out}/{name}.safetensors')")
        p = model.preprocess
        if (tuple(p.mean), tuple(p.std)) != (OPENAI_MEAN, OPENAI_STD):
            print(f"note: this model normalises with mean={list(p.mean)} std={list(p.std)}; pass them as "
                  "image_mean/image_std to open_clip.create_model_and_transforms (or use --layout hub)")
    return 0
