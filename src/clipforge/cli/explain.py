"""``clipforge explain``: what a unit of the image tower or a prompt responds to
(a thin wrapper over :mod:`clipforge.analysis.neurons`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="what a unit or a prompt responds to: the images that activate it most and "
                       "an image optimised to activate it")
    p.add_argument("--model", required=True, help="any CLIP clipforge loads")
    p.add_argument("--unit", action="append", default=[], metavar="MODULE:CHANNEL",
                   help="a channel of an image-tower module, e.g. visual.layer4.0:5 (repeatable)")
    p.add_argument("--prompt", action="append", default=[], help="a text concept, e.g. 'a red star' (repeatable)")
    p.add_argument("--dataset", default=None, help="images to rank: a folder, a CSV with an image column, or a "
                   "built-in name (omit to only visualise)")
    p.add_argument("--image-column", default="image")
    p.add_argument("-k", type=int, default=16, help="top images per target (default: 16)")
    p.add_argument("--steps", type=int, default=256, help="feature-visualisation steps (0: none)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--list-units", action="store_true", help="list the image tower's module names and exit")
    p.add_argument("--out", default="results/explain", help="folder for the PNGs, explain.json and explain.md")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    p.set_defaults(func=run)


def _images(dataset: str, image_column: str) -> list[str]:
    import csv

    from clipforge.data.datasets import BUILTIN, IMAGE_SUFFIXES, load_classification
    from clipforge.errors import DataError

    if dataset in BUILTIN:
        return load_classification(dataset).images
    p = Path(dataset)
    if p.is_dir():
        return [str(f) for f in sorted(p.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
    if p.suffix.lower() == ".csv" and p.is_file():
        with open(p, newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.DictReader(f)
            if image_column not in (reader.fieldnames or []):
                raise DataError(f"{p}: no column {image_column!r}; the header has {reader.fieldnames}")
            return [str(Path(r[image_column]) if Path(r[image_column]).is_absolute() else p.parent / r[image_column])
                    for r in reader]
    raise DataError(f"{dataset}: expected a folder of images, a CSV with an {image_column!r} column or a built-in name")


def run(args: argparse.Namespace) -> int:
    from PIL import Image, ImageDraw

    from clipforge.analysis.neurons import Target, top_images, unit_modules, visualise
    from clipforge.cli.evaluate import _at_least, _load
    from clipforge.errors import ClipforgeError
    from clipforge.io import atomic_write_text

    model = _load(args.model, args.device)
    if args.list_units:
        print("\n".join(unit_modules(model)))
        return 0
    targets = [Target.parse_unit(u) for u in args.unit] + [Target(prompt=p) for p in args.prompt]
    if not targets:
        raise ClipforgeError("give at least one --unit MODULE:CHANNEL or --prompt TEXT (--list-units lists modules)")
    _at_least(args.k, 1, "-k")
    _at_least(args.steps, 0, "--steps")
    if any(not t.prompt.strip() for t in targets if not t.module):
        raise ClipforgeError("--prompt: empty prompt")
    paths = _images(args.dataset, args.image_column) if args.dataset else []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary, md = [], [f"# What {args.model} responds to", ""]
    for n, target in enumerate(targets):
        entry: dict = {"target": target.label}
        name = f"{n:02d}_" + "".join(c if c.isalnum() else "_" for c in target.label)[:40]
        if paths:
            top, bad = top_images(model, target, paths, args.k)
            if bad:
                print(f"warning: {bad} unreadable image(s) left out")
            entry["top"] = [{"image": p, "activation": v} for p, v in top]
            tiles = []
            for p, v in top:
                im = Image.open(p).convert("RGB").resize((96, 96))
                tile = Image.new("RGB", (96, 112), "white")
                tile.paste(im, (0, 0))
                ImageDraw.Draw(tile).text((2, 98), f"{v:.3f}", fill="black")
                tiles.append(tile)
            grid = Image.new("RGB", (100 * min(8, len(tiles)), 116 * ((len(tiles) + 7) // 8)), "white")
            for i, t in enumerate(tiles):
                grid.paste(t, (100 * (i % 8), 116 * (i // 8)))
            grid.save(out / f"{name}_top.png")
            md += [f"## {target.label}", "", f"![top images]({name}_top.png)", ""]
        if args.steps:
            fallback = _start_image(entry["top"][0]["image"], model) if paths and entry["top"] else None
            vis = visualise(model, target, steps=args.steps, lr=args.lr, seed=args.seed, fallback=fallback)
            shots = [Image.fromarray((s.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).resize(
                (128, 128), Image.Resampling.NEAREST) for s in vis["snapshots"]]
            strip = Image.new("RGB", (132 * len(shots), 128), "white")
            for i, s in enumerate(shots):
                strip.paste(s, (132 * i, 0))
            strip.save(out / f"{name}_visualisation.png")
            first, last = vis["history"][0][1], vis["history"][-1][1]
            entry["visualisation"] = {"history": vis["history"], "start": first, "end": last,
                                      "started_from": "the top image" if vis["start"] == "fallback" else
                                      f"Fourier noise (scale {vis['start']:g})"}
            if not paths:
                md += [f"## {target.label}", ""]
            md += [f"Optimised image from {entry['visualisation']['started_from']} (snapshots left to right; the "
                   f"activation went from {first:.3f} to {last:.3f} in {args.steps} steps):", "",
                   f"![visualisation]({name}_visualisation.png)", ""]
            print(f"{target.label}: visualisation from {entry['visualisation']['started_from']}, activation "
                  f"{first:.3f} -> {last:.3f}")
        if paths:
            print(f"{target.label}: top image {entry['top'][0]['image']} ({entry['top'][0]['activation']:.3f})")
        summary.append(entry)
    atomic_write_text(json.dumps({"model": args.model, "targets": summary}, indent=2), out / "explain.json")
    atomic_write_text("\n".join(md), out / "explain.md")
    print(f"written to {out} (explain.md, explain.json, PNGs)")
    return 0


def _start_image(path: str, model):
    """The image at ``path`` as the model sees it (resized and centre-cropped, not normalised): [3, H, W] in [0, 1]."""
    from clipforge.data.images import Uint8Crop
    from clipforge.images.decode import open_image

    return Uint8Crop(model.preprocess.image_size)(open_image(path)).float() / 255.0
