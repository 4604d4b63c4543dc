"""Every generator family on one table: the same scenes, prompts, CPU budget and judge.

Trains each ``--methods`` generator (diffusion: ``ddpm``; GANs: ``gan-cls``, ``gan-int-cls``, ...;
``aligndraw``; the token transformers ``dalle`` and ``dalle-mini``, each over an image tokenizer
trained first for ``--tokenizer-minutes``: a dVAE for DALL-E, a VQ-VAE for DALL-E mini)
for ``--minutes`` (the engine's ``minutes=``: the schedule is sized to it) over the demo's CLIP
(``outputs/demo/run/model``) on the demo's 10,000 training scenes at 32 px, then scores each with
``evaluate_generator`` under a judge CLIP that no generator or guide uses (``--judge``: the demo's
ViT variant trained with seed 1, as bench/captioning.py trains it):

- plain sampling (DDPM: DDIM 50 steps, guidance 3);
- re-ranking 4x by the generator's own CLIP;
- CLIP-guided latent search by the generator's own CLIP within ``--budget`` generator calls per
  prompt: random latents (the best of the budget), the genetic algorithm, gradient ascent. For the
  DDPM the search renders with ``--search-steps`` DDIM steps, so its budget costs what the GANs' does
  in calls, not in time; the samples/s column says what each costs. The token transformers have no
  latent to search; they get a top-k row instead (``--top-k``).

A third table is the key/value cache's speed-up on the token transformers: the same prompts and
seed sampled with and without it (the tokens must agree).

The guide's own score of the kept images is printed beside the judge's: the gap between the gain the
guide sees and the gain the judge confirms is the adversarial part of the search. A second table is
ControlGAN's claim measured on every generator: with the latent fixed, editing the colour (or shape)
word of each prompt, how often the reader sees the edit, and how often the other attributes stay.

    .venv/bin/python bench/generators.py --judge /tmp/genwork/judge/model --minutes 10 -n 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    import torch

    import clipforge
    from clipforge.evaluation.judge import load_judge
    from clipforge.generation.config import GenerationTrainConfig
    from clipforge.generation.evaluate import evaluate_generator
    from clipforge.generation.sample import SampleOptions
    from clipforge.generation.train import train_generator
    from common import machine, markdown_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", default="outputs/demo/run/model")
    parser.add_argument("--data", default="outputs/demo/data")
    parser.add_argument("--judge", required=True)
    parser.add_argument("--methods", default="ddpm,gan-cls,gan-int-cls,controlgan")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("-n", type=int, default=2, help="samples per prompt (64 prompts)")
    parser.add_argument("--budget", type=int, default=32, help="latent search: generator calls per prompt")
    parser.add_argument("--search-steps", type=int, default=10, help="DDIM steps of a diffusion model's search")
    parser.add_argument("--tokenizer-minutes", type=float, default=6.0, help="dalle, dalle-mini: the image "
                        "tokenizer's training budget (added to the transformer's in the table)")
    parser.add_argument("--top-k", type=int, default=32, help="token transformers: the top-k row's k")
    parser.add_argument("--work", default=None)
    parser.add_argument("--reuse", action="store_true", help="evaluate the generators already in --work")
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    work = Path(args.work or tempfile.mkdtemp(prefix="clipforge-bench-generators-"))
    judge = load_judge(args.judge, torch.device("cpu"))
    rows, details, edits, cache_rows = [], {}, [], []

    def score(name: str, model, minutes: float, train_steps: int, word_edits: bool = False, **opts) -> None:
        o = SampleOptions(n=args.n, **opts)
        start = time.perf_counter()
        m = evaluate_generator(model, args.data, judge, o, out_dir=work / "reports" / name.replace(" ", "_"),
                               word_edits=word_edits)
        seconds = time.perf_counter() - start  # sampling and scoring; the scoring is the same for every row
        details[name] = {**m, "eval_seconds": seconds}
        guide = m.get("guide_clip_score")
        rows.append([name, *(f"{m[s]['clip_score']:.1f}" for s in ("seen", "heldout")),
                     *(f"{100 * m[s]['r_precision']:.1f}" for s in ("seen", "heldout")),
                     *(f"{100 * m[s]['colour_and_shape_acc']:.1f}" for s in ("seen", "heldout")),
                     f"{100 * m['seen']['size_acc']:.0f} / {100 * m['seen']['position_acc']:.0f}",
                     f"{m['frechet_distance']:.3f}", "-" if guide is None else f"{guide:.1f}",
                     f"{minutes:.1f}", train_steps, f"{m['images_per_s']:.1f}"])
        print(" | ".join(str(c) for c in rows[-1]), flush=True)
        if word_edits:
            e = m["word_edits"]
            edits.append([name, *(f"{100 * e[a][k]:.1f}" for a in ("colour", "shape")
                                  for k in ("before", "changed", "kept", "consistent"))])
            print(" | ".join(edits[-1]), flush=True)

    def train(method: str, out: Path, minutes: float, **extra) -> None:
        if not (args.reuse and (out / "model" / "config.json").is_file()):
            cfg = GenerationTrainConfig.from_dict({
                "method": method, "clip": args.clip, "data": str(Path(args.data) / "train.csv"),
                "out_dir": str(out), "epochs": 1000, "minutes": minutes, "image_size": 32,
                "batch_size": 64, "tensorboard": False, "seed": 0, **extra})
            train_generator(cfg, progress=False)

    def wall_minutes(out: Path) -> float:
        return json.loads((out / "summary.json").read_text())["wall_seconds"] / 60

    def cache_speed(method: str, model) -> list[str]:
        from clipforge.generation.prompts import scene_prompts

        prompts = [p["prompt"] for p in scene_prompts()]
        seconds, tokens = [], []
        for use_cache in (True, False):
            start = time.perf_counter()
            out = model.generate(prompts, generator=torch.Generator().manual_seed(0), use_cache=use_cache)
            seconds.append(time.perf_counter() - start)
            tokens.append(out["tokens"])
        row = [method, f"{seconds[0]:.1f}", f"{seconds[1]:.1f}", f"{seconds[1] / seconds[0]:.1f}x",
               str(bool(torch.equal(*tokens)))]
        print(" | ".join(row), flush=True)
        return row

    for method in args.methods.split(","):
        out = work / method
        extra, before = {}, 0.0
        if method in ("dalle", "dalle-mini"):
            tok = work / ("dvae" if method == "dalle" else "vqvae")
            train(tok.name, tok, args.tokenizer_minutes)
            extra, before = {"tokenizer": str(tok / "model")}, wall_minutes(tok)
        train(method, out, args.minutes, **extra)
        summary = json.loads((out / "summary.json").read_text())
        minutes, steps = before + summary["wall_seconds"] / 60, summary["steps"]
        if (out / "style" / "summary.json").is_file():
            minutes += wall_minutes(out / "style")
        model = clipforge.load(out / "model")
        diffusion = method == "ddpm"
        base = {"guidance": 3.0, "steps": 50} if diffusion else {}
        latent = hasattr(model, "render")
        score(method, model, minutes, steps, word_edits=latent, **base)
        score(f"{method}, re-ranked 4x", model, minutes, steps, rerank=4, **base)
        if not latent:
            score(f"{method}, top-k {args.top_k}", model, minutes, steps, top_k=args.top_k)
            cache_rows.append(cache_speed(method, model))
            continue
        search = {"guidance": 3.0, "steps": args.search_steps} if diffusion else {}
        label = f", DDIM {args.search_steps}" if diffusion else ""
        for kind in ("random", "ga", "grad"):
            score(f"{method}, search {kind} {args.budget}{label}", model, minutes, steps, search=kind,
                  budget=args.budget, **search)
    ceiling = details[next(iter(details))]["ceiling"]
    if cache_rows:
        print("\nThe key/value cache (64 prompts x 1 image, batch 64, the same seed):\n")
        print(markdown_table(["generator", "with cache s", "without cache s", "speed-up", "same tokens"], cache_rows))
    rows.append(["real images (ceiling)", *(f"{ceiling[s]['clip_score']:.1f}" for s in ("seen", "heldout")),
                 "-", "-", *(f"{100 * ceiling[s]['colour_and_shape_acc']:.1f}" for s in ("seen", "heldout")),
                 f"{100 * ceiling['seen']['size_acc']:.0f} / {100 * ceiling['seen']['position_acc']:.0f}", "-", "-",
                 "-", "-", "-"])
    print()
    print(markdown_table(["generator", "CLIP-S seen", "CLIP-S held-out", "R-prec seen %", "R-prec held-out %",
                          "colour+shape seen %", "colour+shape held-out %", "size / position seen %",
                          "Frechet (judge)", "guide's CLIP-S", "train min", "steps", "images/s"], rows))
    print("\nOne word edited, the latent fixed (64 prompts x n latents; attributes read by the reader):\n")
    print(markdown_table(["generator", *(f"{a} {k} %" for a in ("colour", "shape")
                                         for k in ("before", "edit drawn", "others as asked", "others as before"))],
                         edits))
    (work / "results.json").write_text(json.dumps(details, indent=2, default=float))
    print(f"\ndetails and HTML reports: {work}")


if __name__ == "__main__":
    main()
