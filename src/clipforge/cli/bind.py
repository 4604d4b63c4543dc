"""``clipforge bind train|eval``: thin wrappers over :mod:`clipforge.bind`."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    from clipforge.cli.options import add_run_options

    p = sub.add_parser("bind", help="bind another modality (speech, depth) to a CLIP's image space (ImageBind)")
    bsub = p.add_subparsers(dest="bind_command", required=True, metavar="BIND_COMMAND")
    t = bsub.add_parser("train", help="train a modality encoder against the frozen CLIP's image embeddings",
                        description="Options from --config (YAML/JSON) and key=value overrides; --help-config lists "
                        "them. The bound model (the CLIP and its modality encoders) is saved to OUT_DIR/model and "
                        "loads with clipforge.load.")
    t.add_argument("--modality", choices=("speech", "depth"), default=None)
    t.add_argument("--clip", default=None, help="the CLIP model folder (or a bound model to add the modality to)")
    t.add_argument("--data", default=None, help="CSV with image and modality columns")
    add_run_options(t)
    t.set_defaults(func=run_train)

    e = bsub.add_parser("eval", help="what emerges: zero-shot by text, retrieval between modalities never paired, "
                        "embedding arithmetic, a text-only decoder re-used")
    e.add_argument("--model", required=True, help="a bound model folder (clipforge bind train)")
    e.add_argument("--data", default=None, help="a folder written by clipforge data synth --modalities ... (its "
                   "zero-shot, validation, word and caption files)")
    e.add_argument("--zeroshot", nargs="*", default=None, help="labelled CSVs (label and modality columns)")
    e.add_argument("--retrieval", default=None, help="CSV whose rows hold several modalities (and a caption)")
    e.add_argument("--classes", default=None, help="class names, comma-separated (default: the dataset's or the "
                   "labels)")
    e.add_argument("--templates", default=None, help="a template set name or file (default: the dataset's, else '{c}')")
    e.add_argument("--captioner", default=None, help="a captioner trained on the CLIP's text embeddings only "
                   "(clipforge caption train --method capdec|decap): its captions of the new modality are scored")
    e.add_argument("--out", default="results/bind", help="folder for bind_eval.json, .md and .png (a chart)")
    e.set_defaults(func=run_eval)


def run_train(args: argparse.Namespace) -> int:
    from clipforge.bind.config import BindTrainConfig
    from clipforge.cli.options import overrides_with_flags, print_config_help

    if args.help_config:
        return print_config_help(BindTrainConfig)
    cfg = BindTrainConfig.load(args.config, overrides_with_flags(args, ("modality", "clip", "data")))
    from clipforge.bind.train import train_bind

    result, _ = train_bind(cfg, resume=args.resume, progress=not args.no_progress)
    if result.state.evals:
        print(json.dumps({k: round(v, 4) for k, v in result.state.evals[-1].items() if isinstance(v, float)}))
    print(f"bound model saved to {result.model_path}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from clipforge.bind.measure import EvalData, measure, synthetic_layout
    from clipforge.bind.model import BoundCLIP
    from clipforge.checkpoints import load
    from clipforge.errors import CheckpointError, ConfigError
    from clipforge.evaluation.templates import get_templates

    model = load(args.model)
    if not isinstance(model, BoundCLIP):
        raise CheckpointError(f"{args.model}: not a bound model (clipforge bind train writes one)")
    if args.data and (args.zeroshot or args.retrieval):
        raise ConfigError("give --data (a synth folder) or --zeroshot/--retrieval CSVs, not both")
    data = synthetic_layout(args.data) if args.data else EvalData(zeroshot=list(args.zeroshot or []),
                                                                  retrieval=args.retrieval)
    if not (data.zeroshot or data.retrieval):
        raise ConfigError("nothing to measure: give --data or --zeroshot/--retrieval CSVs")
    if args.classes:
        data.classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    if args.templates:
        data.templates = get_templates(args.templates)
    data.captioner = args.captioner
    results = {"model": args.model, **measure(model, data)}
    from clipforge.bind.evaluate import summary_markdown, write_report

    path = write_report(args.out, results)
    print(summary_markdown(results))
    print(f"results written to {path}, {path.with_suffix('.md')} and {path.with_suffix('.png')}")
    return 0
