"""``clipforge data synth``: write the embedded synthetic captioned dataset."""

from __future__ import annotations

import argparse

from clipforge.data.synthetic import SynthConfig, write_dataset


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="make datasets (synthetic scenes)")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    s = dsub.add_parser("synth", help="generate the synthetic captioned scenes (no download)")
    s.add_argument("out", help="output folder")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--image-size", type=int, default=64)
    s.add_argument("--train", type=int, default=10000, help="training scenes")
    s.add_argument("--val", type=int, default=1000, help="validation scenes")
    s.add_argument("--zeroshot-per-class", type=int, default=10, help="zero-shot images per (shape, colour)")
    s.set_defaults(func=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    cfg = SynthConfig(seed=args.seed, image_size=args.image_size, n_train=args.train, n_val=args.val,
                      n_zeroshot_per_class=args.zeroshot_per_class)
    out = write_dataset(args.out, cfg)
    print(f"wrote synthetic dataset to {out} (train.csv, val.csv, zeroshot_seen.csv, zeroshot_heldout.csv)")
    return 0
