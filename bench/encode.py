"""Image and text encoding throughput of the ViT-B/32 and RN50 configs.

Every combination of batch size (1, 8, 64), torch threads (1, 2) and precision (fp32, bf16
autocast) is measured in one run; the ratio column compares each to fp32 at 1 thread with the
same model, tower and batch (the baseline measured in the same run). A second table compares text
encoding with clipforge's padding trim (exact: causal attention, pooled at the end token) against
the untrimmed 77-token forward that open_clip runs, on captions of typical length.

    .venv/bin/python bench/encode.py            # full table
    .venv/bin/python bench/encode.py --quick    # batch 1 and 8 only
    .venv/bin/python bench/encode.py --trim-only --models ViT-B-32   # the padding-trim table alone

The inference paths (clipforge.inference) against open_clip eager, same weights, batch 16, one thread,
and the demo's retrieval under each path (needs open_clip importable for its column, and `make demo`'s
model for the retrieval table):

    python bench/encode.py --paths [--demo outputs/demo/run/model --demo-data outputs/demo/data]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from clipforge.models import CLIP, get_config  # noqa: E402
from common import machine, markdown_table, timeit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["ViT-B-32", "RN50"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 64])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement")
    parser.add_argument("--quick", action="store_true", help="batch sizes 1 and 8 only")
    parser.add_argument("--trim-only", action="store_true", help="only the padding-trim table")
    parser.add_argument("--paths", action="store_true", help="the inference paths against open_clip eager")
    parser.add_argument("--demo", default="outputs/demo/run/model", help="--paths: the model of the retrieval table")
    parser.add_argument("--demo-data", default="outputs/demo/data", help="--paths: its data folder (val.csv)")
    args = parser.parse_args()
    if args.paths:
        from encode_paths import paths_tables

        print(f"machine: {machine()}\n")
        print(paths_tables(args.models, args.min_time, args.demo, args.demo_data))
        return
    batches = [1, 8] if args.quick else args.batches
    if args.trim_only:
        print(f"machine: {machine()}\n")
        print(trim_table(args.models, batches, args.threads, args.min_time))
        return

    print(f"machine: {machine()}\n")
    rows = []
    for name in args.models:
        cfg = get_config(name)
        torch.manual_seed(0)
        model = CLIP(cfg).eval()
        for tower in ("image", "text"):
            for batch in batches:
                if tower == "image":
                    x = torch.randn(batch, 3, cfg.vision.image_size, cfg.vision.image_size)
                    fn = lambda x=x, m=model: m.encode_image(x)  # noqa: E731
                else:
                    x = torch.randint(1, 49000, (batch, cfg.text.context_length))
                    x[:, 20] = 49407
                    fn = lambda x=x, m=model: m.encode_text(x)  # noqa: E731
                baseline = None
                for threads in args.threads:
                    torch.set_num_threads(threads)
                    for precision in ("fp32", "bf16"):
                        ctx = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
                               else contextlib.nullcontext())

                        def run(fn=fn, ctx=ctx) -> None:
                            with torch.inference_mode(), ctx:
                                fn()

                        sec = timeit(run, min_time=args.min_time)
                        rate = batch / sec
                        baseline = baseline or rate
                        rows.append([name, tower, batch, threads, precision, f"{rate:.1f}",
                                     f"{sec * 1000:.1f}", f"{rate / baseline:.2f}"])
                        print(" | ".join(str(c) for c in rows[-1]), flush=True)
    print()
    print(markdown_table(["model", "tower", "batch", "threads", "precision", "items/s", "ms/batch",
                          "vs fp32 1 thread"], rows))
    print()
    print(trim_table(args.models, batches, args.threads, args.min_time))


def trim_table(models: list[str], batches: list[int], threads_list: list[int], min_time: float) -> str:
    """Text encoding of real captions (about 12 tokens) with and without the padding trim."""
    from clipforge.tokenizer import BPETokenizer

    tok = BPETokenizer()
    captions = ["a photo of a small red circle in the top left corner of the image"] * 64
    rows = []
    for name in models:
        torch.manual_seed(0)
        model = CLIP(get_config(name)).eval()
        for batch in batches:
            tokens = tok(captions[:batch])
            for threads in threads_list:
                torch.set_num_threads(threads)
                rates = {}
                for trim in (False, True):
                    model.text.trim_padding = trim

                    def run(t=tokens, m=model) -> None:
                        with torch.inference_mode():
                            m.encode_text(t)

                    rates[trim] = batch / timeit(run, min_time=min_time)
                rows.append([name, batch, threads, f"{rates[False]:.1f}", f"{rates[True]:.1f}",
                             f"{rates[True] / rates[False]:.2f}"])
                print(" | ".join(str(c) for c in rows[-1]), flush=True)
    return markdown_table(["model", "batch", "threads", "77 tokens (baseline) texts/s", "trimmed texts/s",
                           "speed-up"], rows)


if __name__ == "__main__":
    main()
