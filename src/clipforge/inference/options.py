"""The ``--backend`` and ``--precision`` options of the commands that encode (no torch import: the
command-line parser is built from them)."""

from __future__ import annotations

import argparse
import os

BACKENDS = ("auto", "torch", "onnx", "compile")
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
BACKEND_HELP = ("auto: the fastest backend and precision whose features agree with eager fp32, measured once per "
                "model and machine and cached; torch; onnx (ONNX Runtime, CPU, fp32; needs clipforge[onnx]); or "
                "compile (torch.compile's inductor: tens of seconds to compile each tower first, so auto never "
                "takes it). Default: $CLIPFORGE_BACKEND, else auto")
PRECISION_HELP = ("auto (see --backend), fp32, bf16 or fp16 (the weights in that type; fp16 on CUDA only), or int8 "
                  "(dynamic quantisation of the linear layers; CPU). Default: $CLIPFORGE_PRECISION, else auto")


def add_inference_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default=os.environ.get("CLIPFORGE_BACKEND", "auto"), help=BACKEND_HELP)
    p.add_argument("--precision", default=os.environ.get("CLIPFORGE_PRECISION", "auto"), help=PRECISION_HELP)
