"""``clipforge caption``: captions for image files and folders, from a CoCa or a prefix captioner;
``clipforge caption train``: train a prefix captioner (ClipCap, CapDec, DeCap) on a frozen CLIP."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("caption", help="caption images with a CoCa or another captioner",
                       description="Prints one line per image ('path: caption'); --json also writes them.")
    p.add_argument("--model", required=True, help="a captioner folder (e.g. a CoCa trained with clipforge train "
                   "model.name=coca-tiny, or an open_clip CoCa)")
    p.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--strategy", choices=("greedy", "beam", "sample"), default="beam")
    p.add_argument("--num-beams", type=int, default=4)
    p.add_argument("--max-len", type=int, default=30, help="most tokens a caption may have (default: 30)")
    p.add_argument("--min-len", type=int, default=0, help="tokens before the caption may end (default: 0)")
    p.add_argument("--top-k", type=int, default=0, help="sample: only the k likeliest tokens (default: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="sample: nucleus probability mass (default: 1)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="sample: the random seed (default: 0)")
    p.add_argument("--search", choices=("rerank", "magic"), default=None,
                   help="iterative captioners: sentence-level CLIP re-ranking in a beam, or MAGIC's token-level "
                        "guidance (default: the one it was trained with)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when present)")
    p.add_argument("--json", default=None, help="also write [{image, caption}] to this file")
    p.set_defaults(func=run)

    # "clipforge caption train ..." (main() routes it here: "caption" itself takes image paths).
    t = sub.add_parser("caption-train", prog="clipforge caption train",
                       help="train a captioner (clipcap, clipcap-frozen, capdec, decap) on a frozen CLIP",
                       description="Options from --config (YAML/JSON) and key=value overrides; --help-config lists "
                       "them. The captioner is saved to OUT_DIR/model.")
    from clipforge.captioning.config import CaptionTrainConfig
    from clipforge.cli.options import add_run_options
    from clipforge.config import choices

    t.add_argument("--method", choices=choices(CaptionTrainConfig, "method"), default=None)
    t.add_argument("--clip", default=None, help="the CLIP whose embeddings are captioned")
    t.add_argument("--data", default=None, help="training captions (CSV image,caption or a captioned folder)")
    add_run_options(t)
    t.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from clipforge.captioning.config import CaptionTrainConfig
    from clipforge.cli.options import overrides_with_flags, print_config_help

    if args.help_config:
        return print_config_help(CaptionTrainConfig)
    overrides = overrides_with_flags(args, ("method", "clip", "data"))
    cfg = CaptionTrainConfig.load(args.config, overrides)
    from clipforge.captioning.train import train_captioner

    train_captioner(cfg, resume=args.resume, progress=not args.no_progress)
    print(f"captioner saved to {cfg.out_dir}/model")
    return 0


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    from clipforge.captioning import caption_images
    from clipforge.checkpoints import load
    from clipforge.engine.distributed import DistInfo, default_device
    from clipforge.errors import ConfigError
    from clipforge.io import atomic_write_text
    from clipforge.models.generation import GenerationConfig

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    config = GenerationConfig(strategy=args.strategy, max_len=args.max_len, min_len=args.min_len,
                              num_beams=args.num_beams, temperature=args.temperature, top_k=args.top_k,
                              top_p=args.top_p, repetition_penalty=args.repetition_penalty)
    device = default_device(DistInfo(), args.device)
    model = load(args.model).to(device)
    if args.search:
        if getattr(model, "arch", "") != "iterative_captioner":
            raise ConfigError(f"--search applies to iterative captioners; {args.model} is a "
                              f"{getattr(model, 'arch', type(model).__name__)}")
        from dataclasses import replace

        model.config = replace(model.config, search=args.search)
    torch.manual_seed(args.seed)
    results, skipped = caption_images(model, args.images, config, args.batch_size, progress=True)
    for r in results:
        print(f"{r['image']}: {r['caption']}")
    if args.json:
        atomic_write_text(json.dumps([{"image": r["image"], "caption": r["caption"]} for r in results]
                                     + [{"image": s.source, "skipped": s.detail or s.reason} for s in skipped],
                                     indent=2), args.json)
    return 0 if results else 2
