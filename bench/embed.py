"""``clipforge embed`` throughput: images/s with 1 decoding thread (the baseline) and more.

Embeds the first ``--images`` rows of a CSV with a model, once per worker count, into fresh folders,
and checks the embeddings are identical whatever the count of decoding threads.

    .venv/bin/python bench/embed.py --model outputs/demo/run/model --csv outputs/demo/data/train.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    import clipforge
    from clipforge.search.embed import embed_collection
    from common import machine, markdown_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--csv", required=True)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--torch-threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    work = Path(tempfile.mkdtemp(prefix="clipforge-bench-embed-"))
    src = Path(args.csv)
    with open(src, newline="") as f:
        rows = list(csv.reader(f))
    subset = work / "subset.csv"
    with open(subset, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(rows[0])
        for r in rows[1 : args.images + 1]:
            r[0] = str((src.parent / r[0]).resolve())
            w.writerow(r)
    model = clipforge.load(args.model)
    table = []
    for threads in args.torch_threads:
        torch.set_num_threads(threads)
        base, reference = None, None  # compared within a torch thread count (reductions may differ across)
        for workers in args.workers:
            out = work / f"emb-{threads}-{workers}"
            t0 = time.perf_counter()
            embed_collection(model, str(subset), out, progress=False, workers=workers)
            rate = args.images / (time.perf_counter() - t0)
            base = base or rate
            vectors = np.load(out / "part-00000.npy")
            reference = vectors if reference is None else reference
            table.append([threads, workers, f"{rate:.0f}", f"{rate / base:.2f}x",
                          "yes" if np.array_equal(vectors, reference) else "NO"])
            print(" | ".join(str(c) for c in table[-1]), flush=True)
    print()
    print(markdown_table(["torch threads", "decoding threads", "images/s", "vs 1 decoding thread",
                          "same embeddings"], table))


if __name__ == "__main__":
    main()
