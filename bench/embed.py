"""``clipforge embed`` throughput: images/s with 1 decoding thread (the baseline) and more.

Embeds the first ``--images`` rows of a CSV with a model, once per worker count, into fresh folders,
and checks the embeddings are identical whatever the count of decoding threads.

    .venv/bin/python bench/embed.py --model outputs/demo/run/model --csv outputs/demo/data/train.csv

``--stages``: is the model the bottleneck? Decoding + preprocessing per image (one thread, the
command's own ``_load``) against encoding per image (batch 64, all torch threads) on eager fp32 and on
the path ``--backend auto`` chooses; ``--model`` may also name a config (random weights, e.g. RN50).

    .venv/bin/python bench/embed.py --stages --model outputs/demo/run/model RN50 ViT-B-32 \
        --csv outputs/demo/data/train.csv
"""

from __future__ import annotations

import argparse
import csv
import os
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
    parser.add_argument("--model", required=True, nargs="+", help="model folder(s); with --stages also config names")
    parser.add_argument("--stages", action="store_true", help="decode+preprocess against encode, per image")
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
    if args.stages:
        print(stages_table(args.model, subset, min(args.images, 256)))
        return
    model = clipforge.load(args.model[0])
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


def stages_table(models: list[str], subset: Path, n: int) -> str:
    """ms per image of decoding + preprocessing (one thread) and of encoding (batch 64)."""
    import copy

    import clipforge
    from clipforge.inference.choice import apply_paths, choose_paths
    from clipforge.inference.paths import EAGER_FP32
    from clipforge.search.collection import read_collection
    from clipforge.search.embed import _load
    from clipforge.tokenizer import BPETokenizer
    from common import markdown_table, timeit

    items = read_collection(str(subset), None, None).items[:n]
    rows = []
    for name in models:
        if Path(name).exists():
            model = clipforge.load(name).eval()
        else:
            torch.manual_seed(0)
            model = clipforge.build(name).eval()
            model.tokenizer = BPETokenizer()
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        pixels = [_load(model, item)[0] for item in items]
        decode_ms = 1000 * (time.perf_counter() - t0) / len(items)
        torch.set_num_threads(len(os.sched_getaffinity(0)))
        batch = torch.stack(pixels[:64])
        auto, _ = choose_paths(copy.deepcopy(model), torch.device("cpu"))
        for label, paths in (("eager fp32", {"image": EAGER_FP32}), (f"auto ({auto['image'].label})", auto)):
            m = apply_paths(copy.deepcopy(model), paths)
            with torch.inference_mode():
                encode_ms = 1000 * timeit(lambda m=m, b=batch: m.encode_image(b), min_time=2) / len(batch)
            bottleneck = "the model" if encode_ms > decode_ms else "decoding"
            rows.append([name, model.preprocess.image_size, label, f"{decode_ms:.2f}", f"{encode_ms:.2f}",
                         f"{encode_ms / decode_ms:.1f}", bottleneck])
            print(" | ".join(str(c) for c in rows[-1]), flush=True)
    return markdown_table(["model", "image px", "encoder path", "decode+preprocess ms/image (1 thread)",
                           "encode ms/image (batch 64)", "encode / decode", "slower stage"], rows)


if __name__ == "__main__":
    main()
