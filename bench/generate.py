"""Caption generation speed with and without the key/value cache, same model, same run.

A CoCa (``coca-tiny`` by default, random weights: speed does not depend on them), a batch of images,
captions forced to ``--length`` tokens (min_len = max_len, so both paths do the same number of steps),
greedy and beam search; runs alternate cached / uncached, median of ``--repeats``. The ids of both
paths are checked to be identical.

    .venv/bin/python bench/generate.py
    .venv/bin/python bench/generate.py --model coca_ViT-B-32 --batch 4 --length 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    import clipforge
    from clipforge.models.generation import GenerationConfig
    from common import machine, markdown_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="coca-tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=30)
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}; torch threads: {args.threads}\n")
    torch.manual_seed(0)
    model = clipforge.build(args.model).eval()
    size = model.config.vision.image_size
    images = torch.randn(args.batch, 3, size, size)
    rows = []
    for name, cfg in (("greedy", GenerationConfig(max_len=args.length, min_len=args.length)),
                      (f"beam {args.beams}", GenerationConfig(strategy="beam", num_beams=args.beams,
                                                              max_len=args.length, min_len=args.length))):
        times: dict[bool, list[float]] = {True: [], False: []}
        ids: dict[bool, torch.Tensor] = {}
        model.generate(images[:1], GenerationConfig(max_len=2))  # warm up
        for _ in range(args.repeats):
            for cache in (True, False):
                t0 = time.perf_counter()
                ids[cache] = model.generate(images, cfg, use_cache=cache)["ids"]
                times[cache].append(time.perf_counter() - t0)
        same = torch.equal(ids[True], ids[False])
        rate = {c: args.batch / statistics.median(t) for c, t in times.items()}
        rows.append([name, args.length, f"{rate[False]:.2f}", f"{rate[True]:.2f}", f"{rate[True] / rate[False]:.2f}x",
                     "yes" if same else "NO"])
        print(" | ".join(str(c) for c in rows[-1]), flush=True)
    print(f"\n{args.model}, batch {args.batch}, captions of {args.length} tokens, median of {args.repeats}\n")
    print(markdown_table(["decoding", "tokens", "captions/s without cache", "captions/s with cache", "speed-up",
                          "same ids"], rows))


if __name__ == "__main__":
    main()
