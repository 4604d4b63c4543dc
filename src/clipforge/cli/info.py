"""``clipforge info MODEL`` and ``clipforge configs``: what a model or a named config is."""

from __future__ import annotations

import argparse
import json

import torch

from clipforge.checkpoints import load
from clipforge.models import CLIP, get_config, list_configs


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print a checkpoint's config and parameter count")
    p.add_argument("model", help="checkpoint file or folder")
    p.add_argument("--config", default=None, help="model config for sources without one")
    p.set_defaults(func=run_info)
    c = sub.add_parser("configs", help="list the named model configs with their sizes")
    c.add_argument("name", nargs="?", help="print this config as JSON")
    c.set_defaults(func=run_configs)


def run_info(args: argparse.Namespace) -> int:
    model = load(args.model, config=args.config)
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps(model.config.to_dict(), indent=2))
    tok = model.tokenizer.to_dict() if model.tokenizer is not None else None
    print(f"parameters: {n:,}")
    print(f"tokenizer: {tok}")
    print(f"preprocess: {model.preprocess.to_dict()}")
    return 0


def run_configs(args: argparse.Namespace) -> int:
    if args.name:
        print(get_config(args.name).to_json())
        return 0
    from clipforge.models.coca import CoCa, CoCaConfig

    for name in list_configs():
        cfg = get_config(name)
        with torch.device("meta"):  # count without allocating
            model = CoCa(cfg) if isinstance(cfg, CoCaConfig) else CLIP(cfg)
            n = sum(p.numel() for p in model.parameters())
        kind = "coca" if isinstance(cfg, CoCaConfig) else cfg.vision.type
        print(f"{name:16s} {kind:6s} image {cfg.vision.image_size:4d}px  "
              f"embed {cfg.embed_dim:5d}  {cfg.activation:10s} {n / 1e6:8.1f}M params")
    return 0

