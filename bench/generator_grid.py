"""One image grid of every generator bench/generators.py trained: two rows per generator (plain
sampling, then a genetic latent search guided by its own CLIP, or for the token transformers,
which have no latent, re-ranking 4x by it), a column per prompt, the same prompts and seed for all.

    .venv/bin/python bench/generator_grid.py --work /tmp/genwork/bench --out docs/images/generators.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

PROMPTS = ["a large red circle in the centre", "a small blue square in the top left",
           "a large green triangle at the bottom", "a yellow star on the right", "a purple cross in the centre",
           "an orange heart on the left", "a large blue star in the centre", "a small red square on the right"]


def main() -> None:
    import torch
    from PIL import Image, ImageDraw

    import clipforge
    from clipforge.generation.sample import SampleOptions, sample_prompts
    from clipforge.images.grid import image_grid

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="bench/generators.py's --work folder")
    parser.add_argument("--methods", default="ddpm,gan-cls,gan-int-cls,controlgan")
    parser.add_argument("--budget", type=int, default=32)
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--out", default="generators.png")
    args = parser.parse_args()
    rows, labels = [], []
    for method in args.methods.split(","):
        model = clipforge.load(Path(args.work) / method / "model")
        base = {"guidance": 3.0, "steps": 50} if method == "ddpm" else {}
        search = {"guidance": 3.0, "steps": 10} if method == "ddpm" else {}
        second = (f"{method} + ga {args.budget}", {**search, "search": "ga", "budget": args.budget}) \
            if hasattr(model, "render") else (f"{method} + re-rank 4x", {"rerank": 4})
        for label, opts in ((method, base), second):
            out = sample_prompts(model, PROMPTS, SampleOptions(n=1, seed=0, **opts))
            rows.append(out["images"][:, 0])
            labels.append(label)
    grid = image_grid(torch.cat(rows), columns=len(PROMPTS), scale=args.scale)
    margin = 120
    canvas = Image.new("RGB", (grid.width + margin, grid.height), "white")
    canvas.paste(grid, (margin, 0))
    draw = ImageDraw.Draw(canvas)
    row_h = grid.height / len(labels)
    for i, label in enumerate(labels):
        draw.text((4, int(i * row_h + row_h / 2 - 6)), label, fill="black")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out, optimize=True)
    print(f"{len(labels)} rows x {len(PROMPTS)} prompts: {args.out}")
    for i, p in enumerate(PROMPTS):
        print(f"column {i + 1}: {p}")


if __name__ == "__main__":
    main()
