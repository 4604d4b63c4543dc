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
    s.add_argument("--zeroshot-per-class", type=int, default=20, help="zero-shot images per (shape, colour)")
    s.add_argument("--shards", action="store_true", help="also pack the training split as webdataset shards")
    s.add_argument("--modalities", default="", help="also write these, comma-separated: speech (the caption "
                   "spoken by espeak-ng, WAV; needs espeak-ng), depth (16-bit PNG depth maps); for clipforge bind")
    s.set_defaults(func=run_synth)
    k = dsub.add_parser("pack", help="write webdataset shards from a CSV/TSV or a captioned image folder")
    k.add_argument("source", help="CSV/TSV file or folder of x.jpg + x.txt")
    k.add_argument("out", help="output folder for shard-000000.tar ... and shards.json")
    k.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    k.add_argument("--image-column", default="image")
    k.add_argument("--caption-column", default="caption")
    k.add_argument("--separator", default=None)
    k.set_defaults(func=run_pack)


def run_synth(args: argparse.Namespace) -> int:
    cfg = SynthConfig(seed=args.seed, image_size=args.image_size, n_train=args.train, n_val=args.val,
                      n_zeroshot_per_class=args.zeroshot_per_class)
    modalities = tuple(m.strip() for m in args.modalities.split(",") if m.strip())
    out = write_dataset(args.out, cfg, modalities=modalities)
    print(f"wrote synthetic dataset to {out} (train.csv, val.csv, zeroshot_seen.csv, zeroshot_heldout.csv)"
          + (f" with {', '.join(modalities)} columns" if modalities else ""))
    if args.shards:
        from clipforge.data.pairs import read_pairs
        from clipforge.data.shards import pack_shards

        shards, _ = pack_shards(read_pairs(out / "train.csv")[0], out / "shards")
        print(f"and {len(shards)} training shards: {out}/shards/shard-{{000000..{len(shards) - 1:06d}}}.tar")
    return 0


def run_pack(args: argparse.Namespace) -> int:
    from collections import Counter

    from clipforge.data.pairs import read_pairs
    from clipforge.data.shards import pack_shards

    pairs, skipped = read_pairs(args.source, args.image_column, args.caption_column, args.separator)
    shards, more = pack_shards(pairs, args.out, shard_size=args.shard_size)
    skipped += more
    n = len(pairs) - len(more)
    print(f"wrote {n} samples in {len(shards)} shards to {args.out}")
    if skipped:
        counts = Counter(s.reason for s in skipped)
        print("skipped: " + ", ".join(f"{r}: {c}" for r, c in counts.items()) + f" (e.g. {skipped[0].source})")
    if shards:
        print(f"train on them with data.train={args.out}/shard-{{000000..{len(shards) - 1:06d}}}.tar")
    return 0
