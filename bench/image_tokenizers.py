"""The image tokenizers bench/generators.py trained (DALL-E's dVAE, DALL-E mini's VQ-VAE) on the demo's
validation scenes, and alignDRAW's validation ELBO and canvas:

- reconstruction MSE (pixels in [-1, 1]) of decode(encode(x));
- the judge's view of the reconstructions: the cosine of each reconstruction with its original, and
  the CLIP-score of reconstructions and of originals with their captions (what a perfect generator
  of these tokens could at best reach);
- codebook usage over the validation tokens: perplexity exp(H), codes used, dead codes;
- a grid: originals, then each tokenizer's reconstructions (``--grid``);
- alignDRAW: the negative ELBO on the validation scenes (nats per image, with its reconstruction and
  KL parts) and the canvas over its steps for a few prompts (``--canvas``).

    .venv/bin/python bench/image_tokenizers.py --work /tmp/genwork/bench --judge /tmp/genwork/judge/model \\
        --grid docs/images/tokenizers.png --canvas docs/images/aligndraw_canvas.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

PROMPTS = ["a large red circle in the centre", "a small blue square in the top left",
           "a large green triangle at the bottom", "a yellow star on the right"]


def main() -> None:
    import torch
    import torch.nn.functional as F

    import clipforge
    from clipforge.data.pairs import read_pairs
    from clipforge.evaluation.embed import embed_pixels, embed_texts
    from clipforge.evaluation.generation import clip_score
    from clipforge.evaluation.judge import load_judge
    from clipforge.generation.aligndraw import validation_elbo
    from clipforge.generation.caption_tokens import caption_ids
    from clipforge.generation.diffusion import to_uint8
    from clipforge.generation.image_tokenizer import codebook_usage
    from clipforge.generation.train import read_training_images
    from clipforge.images.grid import image_grid
    from common import machine, markdown_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="bench/generators.py's --work folder")
    parser.add_argument("--data", default="outputs/demo/data")
    parser.add_argument("--judge", required=True)
    parser.add_argument("--grid", default=None, help="write the reconstruction grid here (PNG)")
    parser.add_argument("--canvas", default=None, help="write alignDRAW's canvas strip here (PNG)")
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    work = Path(args.work)
    pairs, _ = read_pairs(str(Path(args.data) / "val.csv"))
    images, keep, _ = read_training_images([p.image for p in pairs], 32, progress=False)
    captions = [pairs[i].caption for i in keep]
    judge = load_judge(args.judge, torch.device("cpu"))
    real = embed_pixels(judge, images)
    text = embed_texts(judge, captions)
    x = images.float() / 127.5 - 1
    rows, grid_rows = [], [images[:8]]
    for name in ("dvae", "vqvae"):
        if not (work / name / "model" / "config.json").is_file():
            continue
        tok = clipforge.load(work / name / "model").eval()
        with torch.no_grad():
            tokens = torch.cat([tok.encode(x[i:i + 256]) for i in range(0, len(x), 256)])
            recon = torch.cat([tok.decode(tokens[i:i + 256]).clamp(-1, 1) for i in range(0, len(x), 256)])
        r8 = to_uint8(recon)
        feats = embed_pixels(judge, r8)
        usage = codebook_usage(tokens, tok.codebook_size)
        rows.append([name, f"{tok.grid}x{tok.grid}, K={tok.codebook_size}", f"{float(F.mse_loss(recon, x)):.4f}",
                     f"{float(F.cosine_similarity(feats, real).mean()):.3f}", f"{clip_score(feats, text):.1f}",
                     f"{usage['perplexity']:.1f}", usage["used"], usage["dead"]])
        print(" | ".join(str(c) for c in rows[-1]), flush=True)
        grid_rows.append(r8[:8])
    print()
    print(markdown_table(["tokenizer", "tokens", "recon MSE", "judge cos(recon, original)", "CLIP-S recon",
                          "perplexity", "codes used", "dead codes"], rows))
    print(f"\noriginals: CLIP-S {clip_score(real, text):.1f} ({len(images)} validation scenes)")
    if args.grid and len(grid_rows) > 1:
        image_grid(torch.cat(grid_rows), columns=8, scale=3).save(args.grid, optimize=True)
        print(f"grid (originals, then {', '.join(r[0] for r in rows)}): {args.grid}")
    draw = work / "aligndraw" / "model"
    if (draw / "config.json").is_file():
        model = clipforge.load(draw)
        ids, lengths = caption_ids(model.tokenizer, captions)
        elbo = validation_elbo(model, images, ids, lengths)
        print(f"\nalignDRAW on {len(images)} validation scenes: -ELBO {elbo['loss']:.1f} nats per image "
              f"(reconstruction {elbo['nll']:.1f} + KL {elbo['kl']:.1f}; MSE {elbo['mse']:.4f} on [0, 1] pixels)")
        if args.canvas:
            out = model.generate(PROMPTS, generator=torch.Generator().manual_seed(0), canvases=True)
            strip = to_uint8(out["canvases"]).transpose(0, 1).flatten(0, 1)
            image_grid(strip, columns=out["canvases"].shape[0], scale=2).save(args.canvas, optimize=True)
            print(f"canvas strip (a row per prompt: {'; '.join(PROMPTS)}): {args.canvas}")


if __name__ == "__main__":
    main()
