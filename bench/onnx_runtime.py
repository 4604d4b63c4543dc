"""ONNX Runtime against eager PyTorch, fp32, on one and two threads: images/s and texts/s, and agreement.

For each named config (random weights: speed and the feature difference do not depend on training)
the model is exported with ``clipforge export --to onnx``'s function, and both backends encode the
same batch alternately in one process. Texts are 77-token inputs (open_clip's fixed length) and
typical captions (what the trimmed path sees). With ``--demo MODEL --data DIR`` the trained demo
model's retrieval recall on the synthetic validation split is computed with both backends.

    .venv/bin/python bench/onnx_runtime.py --work /tmp/onnxbench \\
        --demo outputs/demo/run/model --data outputs/demo/data
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def retrieval_both(model_dir: str, data: str, work: Path) -> list[list[object]]:
    import csv

    from clipforge.checkpoints import load
    from clipforge.checkpoints.onnx import OnnxCLIP, export_onnx
    from clipforge.evaluation.retrieval import retrieval_metrics

    model = load(model_dir)
    export_onnx(model, work / "demo_onnx", source=model_dir)
    runtime = OnnxCLIP(work / "demo_onnx")
    with open(Path(data) / "val.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    pixels = torch.stack([model.preprocess(Path(data) / r["image"]) for r in rows])
    tokens = model.tokenizer([r["caption"] for r in rows])
    out = []
    for name, enc in (("eager", model), ("onnxruntime", runtime)):
        with torch.no_grad():
            img = torch.cat([enc.encode_image(pixels[i:i + 64], normalize=True) for i in range(0, len(rows), 64)])
            txt = torch.cat([enc.encode_text(tokens[i:i + 64], normalize=True) for i in range(0, len(rows), 64)])
        m = retrieval_metrics(img.float(), txt.float(), list(range(len(rows))))
        out.append([name, f"{100 * m['image_retrieval_recall@1']:.2f}", f"{100 * m['text_retrieval_recall@1']:.2f}",
                    f"{100 * m['image_retrieval_recall@5']:.2f}"])
    return out


def main() -> None:
    from clipforge.checkpoints.onnx import OnnxCLIP, export_onnx
    from clipforge.models import CLIP, get_config
    from clipforge.tokenizer import BPETokenizer
    from common import machine, markdown_table, timeit

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["ViT-B-32", "RN50"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--min-time", type=float, default=3.0)
    p.add_argument("--work", default=None)
    p.add_argument("--demo", default=None, help="a trained model folder for the retrieval agreement")
    p.add_argument("--data", default=None, help="its synthetic data folder (val.csv)")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp())
    rows = []
    tok = BPETokenizer()
    captions = ["a photo of a dog on the beach", "a red circle to the left of a blue square", "two cats",
                "a large green hexagon in the top right corner of the picture"] * (args.batch // 4 + 1)
    for name in args.models:
        torch.manual_seed(0)
        model = CLIP(get_config(name)).eval()
        model.tokenizer = tok
        export_onnx(model, work / name, source=name)
        size = model.config.vision.image_size
        pixels = torch.randn(args.batch, 3, size, size)
        inputs = {"images": pixels, "texts (77 tokens)": torch.randint(1, 49407, (args.batch, 77)),
                  "texts (captions)": tok(captions[: args.batch])}
        inputs["texts (77 tokens)"][:, -1] = 49407  # the end token last: no trimming possible
        for threads in args.threads:
            torch.set_num_threads(threads)
            runtime = OnnxCLIP(work / name, threads=threads)
            for what, x in inputs.items():
                image = what == "images"
                eager_fn = (lambda x=x, m=model: m.encode_image(x, normalize=True)) if image else \
                    (lambda x=x, m=model: m.encode_text(x, normalize=True))
                ort_fn = (lambda x=x, r=runtime: r.encode_image(x)) if image else \
                    (lambda x=x, r=runtime: r.encode_text(x))
                with torch.no_grad():
                    diff = (eager_fn() - ort_fn()).abs().max().item()
                    t_eager = timeit(eager_fn, min_time=args.min_time)
                    t_ort = timeit(ort_fn, min_time=args.min_time)
                    # Alternated: a quiet moment of the machine counts for both.
                    t_eager = min(t_eager, timeit(eager_fn, min_time=args.min_time))
                    t_ort = min(t_ort, timeit(ort_fn, min_time=args.min_time))
                rows.append([name, what, threads, f"{args.batch / t_eager:.1f}", f"{args.batch / t_ort:.1f}",
                             f"{t_eager / t_ort:.2f}x", f"{diff:.1e}"])
                print(rows[-1], flush=True)
    print(f"\n{machine()}, batch {args.batch}, fp32\n")
    print(markdown_table(["model", "input", "threads", "eager /s", "onnxruntime /s", "ratio", "max |diff|"], rows))
    if args.demo and args.data:
        print("\nretrieval on the demo's validation split (1,000 pairs), recall %\n")
        print(markdown_table(["backend", "text->image R@1", "image->text R@1", "text->image R@5"],
                             retrieval_both(args.demo, args.data, work)))


if __name__ == "__main__":
    main()
