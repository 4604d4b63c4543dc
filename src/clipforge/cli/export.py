"""``clipforge export SRC DST --to onnx``: a CLIP model's towers as ONNX graphs, checked against the model."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a CLIP model for another runtime (ONNX: image and text graphs)",
                       description="Writes DST/image.onnx and DST/text.onnx (dynamic batch; text length up to the "
                       "context length) and DST/onnx.json; each graph is run with ONNX Runtime against the model "
                       "and refused if its features differ by more than 1e-4.")
    p.add_argument("src", help="any checkpoint clipforge.load reads")
    p.add_argument("dst", help="output folder (replaced atomically)")
    p.add_argument("--to", choices=("onnx",), default="onnx")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from clipforge.checkpoints import load
    from clipforge.checkpoints.onnx import export_onnx

    manifest = export_onnx(load(args.src), args.dst, source=args.src)
    diffs = ", ".join(f"{k} {v:.1e}" for k, v in manifest["max_abs_diff"].items())
    print(f"{args.dst}: image.onnx, text.onnx (largest feature difference from the model: {diffs})")
    return 0
