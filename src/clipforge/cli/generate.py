"""``clipforge generate train | sample | interpolate | variations | style``: images from text through a
CLIP's joint space."""

from __future__ import annotations

import argparse


def _sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", type=int, default=4, help="images per prompt (default: 4)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default: 50; ddpm uses all T)")
    p.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim")
    p.add_argument("--guidance", type=float, default=3.0,
                   help="classifier-free guidance scale s (0: unconditional, 1: no guidance; default: 3)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM noise (0: deterministic)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when present)")
    p.add_argument("--scale", type=int, default=4, help="enlarge each image this many times in the grid")


def _token_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=float, default=1.0,
                   help="dalle, dalle-mini: divide the logits by this (0: the most likely token; default: 1)")
    p.add_argument("--top-k", type=int, default=0, help="dalle, dalle-mini: sample among the k most likely tokens "
                   "(default: 0, all)")
    p.add_argument("--top-p", type=float, default=1.0, help="dalle, dalle-mini: sample among the smallest set of "
                   "tokens reaching this probability (default: 1, all)")
    p.add_argument("--no-cache", action="store_true", help="dalle, dalle-mini: recompute the whole prefix for each "
                   "token instead of using the key/value cache (slower; the same tokens)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from clipforge.cli.options import add_run_options
    from clipforge.config import choices
    from clipforge.generation.config import GenerationTrainConfig

    p = sub.add_parser("generate", help="text-to-image (diffusion, GANs, alignDRAW, DALL-E): train, sample, "
                       "interpolate, variations, style, reconstruct")
    gsub = p.add_subparsers(dest="generate_command", required=True, metavar="GENERATE_COMMAND")

    t = gsub.add_parser("train", help="train a generator (ddpm: text-conditioned diffusion; unclip: prior + "
                        "decoder; gan, gan-cls, gan-int, gan-int-cls: Reed et al.'s text-conditional GANs; "
                        "controlgan; aligndraw; dalle, dalle-mini: transformers over the ids of an image tokenizer "
                        "trained first with dvae or vqvae)",
                        description="Options from --config (YAML/JSON) and key=value overrides; --help-config lists "
                        "them. The generator is saved to OUT_DIR/model.")
    t.add_argument("--method", choices=choices(GenerationTrainConfig, "method"), default=None)
    t.add_argument("--clip", default=None, help="the CLIP whose embeddings condition the generator")
    t.add_argument("--data", default=None, help="training pairs (CSV image,caption or a captioned folder)")
    t.add_argument("--tokenizer", default=None, help="dalle, dalle-mini: the image tokenizer's folder (trained with "
                   "--method dvae or vqvae)")
    add_run_options(t)
    t.set_defaults(func=run_train)

    s = gsub.add_parser("sample", help="images for prompts, as a PNG grid (a row per prompt)")
    s.add_argument("--model", required=True, help="a generator folder (clipforge generate train)")
    s.add_argument("prompts", nargs="+", help="one or more text prompts")
    _sampling(s)
    s.add_argument("--rerank", type=int, default=1,
                   help="draw this many times n images and keep the n the CLIP ranks closest to the prompt")
    s.add_argument("--rerank-clip", default=None, help="the CLIP that re-ranks or guides the search (default: the "
                   "generator's own)")
    s.add_argument("--search", choices=("ga", "grad", "random"), default=None,
                   help="CLIP-guided latent search (ddpm, GANs): a genetic algorithm, gradient ascent through the "
                   "generator, or the best of random latents, within --budget generator calls per prompt")
    s.add_argument("--budget", type=int, default=64, help="latent search: generator calls per prompt (default: 64)")
    s.add_argument("--no-prior", action="store_true", help="unclip: decode the text embedding itself, not the "
                   "prior's image embedding")
    _token_sampling(s)
    s.add_argument("--canvas", default=None, help="aligndraw: also write the canvas after every step for each "
                   "prompt's first image: a row per prompt (.png), or an animation (.gif)")
    s.add_argument("--out", default="samples.png", help="the grid PNG (default: samples.png)")
    s.set_defaults(func=run_sample)

    i = gsub.add_parser("interpolate", help="a strip of images between two latents for a prompt, or between two "
                        "prompts from one latent (DDIM deterministic; a GAN's z)")
    i.add_argument("--model", required=True, help="a generator folder")
    i.add_argument("prompt")
    i.add_argument("--to", default=None, help="a second prompt: interpolate the embeddings instead of the noise")
    i.add_argument("--frames", type=int, default=8)
    _sampling(i)
    i.add_argument("--out", default="interpolation.png")
    i.set_defaults(func=run_interpolate)

    v = gsub.add_parser("variations", help="unclip: images decoded from the CLIP embedding of existing images")
    v.add_argument("--model", required=True, help="an unclip generator folder")
    v.add_argument("images", nargs="+", help="image files")
    _sampling(v)
    v.add_argument("--out", default="variations.png", help="the grid PNG (a row per image, the original first)")
    v.set_defaults(func=run_variations)

    st = gsub.add_parser("style", help="GANs: redraw images for new prompts in their pose and background (the "
                         "style encoder's z, Reed et al. section 4.4)")
    st.add_argument("--model", required=True, help="a GAN generator folder (trained with a style encoder)")
    st.add_argument("--style", action="append", required=True, help="an image whose style (pose, background) is "
                    "kept; repeat for more")
    st.add_argument("prompts", nargs="+", help="prompts: each is drawn in the style of every image")
    st.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when present)")
    st.add_argument("--scale", type=int, default=4, help="enlarge each image this many times in the grid")
    st.add_argument("--out", default="style.png", help="the grid PNG (a row per image, the original first)")
    st.set_defaults(func=run_style)

    r = gsub.add_parser("reconstruct", help="image tokenizers (dvae, vqvae): images through their tokens and back, "
                        "with the error and the codes used")
    r.add_argument("--model", required=True, help="a tokenizer folder (generate train --method dvae|vqvae)")
    r.add_argument("images", nargs="+", help="image files")
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when present)")
    r.add_argument("--scale", type=int, default=4, help="enlarge each image this many times in the grid")
    r.add_argument("--out", default="reconstructions.png", help="the grid PNG (a row per image: the original, its "
                   "reconstruction)")
    r.set_defaults(func=run_reconstruct)


def run_train(args: argparse.Namespace) -> int:
    from clipforge.cli.options import overrides_with_flags, print_config_help
    from clipforge.generation.config import GenerationTrainConfig

    if args.help_config:
        return print_config_help(GenerationTrainConfig)
    cfg = GenerationTrainConfig.load(args.config, overrides_with_flags(args, ("method", "clip", "data", "tokenizer")))
    from clipforge.generation.train import train_generator

    train_generator(cfg, resume=args.resume, progress=not args.no_progress)
    what = "image tokenizer" if cfg.method in ("dvae", "vqvae") else "generator"
    print(f"{what} saved to {cfg.out_dir}/model")
    return 0


GENERATOR_ARCHS = ("clip_diffusion", "unclip", "text_gan", "controlgan", "aligndraw", "dalle", "dalle_mini")


def _load_generator(path: str, device: str | None):
    from clipforge.checkpoints import load
    from clipforge.engine.distributed import DistInfo, default_device
    from clipforge.errors import ConfigError

    model = load(path).to(default_device(DistInfo(), device))
    arch = getattr(model, "arch", type(model).__name__)
    if arch in ("dvae", "vqvae"):
        raise ConfigError(f"--model {path}: an image tokenizer ({arch}), not a generator; train a dalle or dalle-mini "
                          "over it (generate train --method dalle tokenizer=PATH), or see it with generate reconstruct")
    if arch not in GENERATOR_ARCHS:
        raise ConfigError(f"--model {path}: a {arch}, not a generator (clipforge generate train makes one)")
    if model.clip is None:
        raise ConfigError(f"--model {path}: its CLIP ({model.config.clip_path}) is not found; it is needed to embed "
                          "the prompts")
    return model


def _options(args: argparse.Namespace, rerank: int = 1, use_prior: bool = True):
    from clipforge.errors import ConfigError
    from clipforge.generation.sample import SampleOptions

    if args.n < 1 or args.batch_size < 1:
        raise ConfigError(f"-n and --batch-size must be at least 1, got {args.n} and {args.batch_size}")
    search = getattr(args, "search", None) or "none"
    return SampleOptions(n=args.n, steps=args.steps, sampler=args.sampler, guidance=args.guidance, eta=args.eta,
                         rerank=rerank, use_prior=use_prior, seed=args.seed, batch_size=args.batch_size,
                         search=search, budget=getattr(args, "budget", 64),
                         temperature=getattr(args, "temperature", 1.0), top_k=getattr(args, "top_k", 0),
                         top_p=getattr(args, "top_p", 1.0), use_cache=not getattr(args, "no_cache", False))


def run_sample(args: argparse.Namespace) -> int:
    from clipforge.checkpoints import load
    from clipforge.generation.sample import sample_prompts
    from clipforge.images.grid import image_grid

    model = _load_generator(args.model, args.device)
    options = _options(args, args.rerank, not args.no_prior)
    rerank_clip = load(args.rerank_clip) if args.rerank_clip else None
    out = sample_prompts(model, list(args.prompts), options, rerank_clip=rerank_clip, progress=True)
    grid = image_grid(out["images"].flatten(0, 1), columns=options.n, scale=args.scale)
    _save_png(grid, args.out)
    print(f"{len(args.prompts)} prompt(s) x {options.n} image(s): {args.out}")
    if args.canvas:
        _write_canvas(model, list(args.prompts), options, args.canvas, args.scale)
    return 0


def _write_canvas(model, prompts: list[str], options, path: str, scale: int) -> None:
    """alignDRAW's canvas after each step for the first draw of each prompt: a strip or a GIF."""
    import torch

    from clipforge.errors import ConfigError
    from clipforge.generation.diffusion import to_uint8
    from clipforge.generation.sample import check_prompts
    from clipforge.images.grid import image_grid

    if model.arch != "aligndraw":
        raise ConfigError(f"--canvas: only aligndraw draws on a canvas step by step, not {model.arch}")
    prompts = check_prompts(model, prompts)
    rows = [p for p in prompts for _ in range(options.n)]  # drawn as the grid draws them: the same latents
    out = model.generate(rows, generator=torch.Generator().manual_seed(options.seed), canvases=True)
    strip = to_uint8(out["canvases"][:, ::options.n]).cpu()  # [T, P, 3, H, W]: each prompt's first image
    steps = strip.shape[0]
    if path.lower().endswith(".gif"):
        frames = [image_grid(strip[t], columns=len(prompts), scale=scale) for t in range(steps)]
        tmp = f"{path}.tmp"
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=150, loop=0)
        import os

        os.replace(tmp, path)
    else:
        _save_png(image_grid(strip.transpose(0, 1).flatten(0, 1), columns=steps, scale=scale), path)
    print(f"the canvas over {steps} steps, {len(prompts)} prompt(s): {path}")


def run_interpolate(args: argparse.Namespace) -> int:
    from clipforge.errors import ConfigError
    from clipforge.generation.diffusion import to_uint8
    from clipforge.generation.interpolate import interpolate
    from clipforge.generation.sample import check_prompts
    from clipforge.images.grid import image_grid

    model = _load_generator(args.model, args.device)
    if args.frames < 2:
        raise ConfigError(f"--frames must be at least 2, got {args.frames}")
    prompts = check_prompts(model, [args.prompt] + ([args.to] if args.to is not None else []))
    o = _options(args)
    images = interpolate(model, prompts[0], prompts[1] if args.to is not None else None, args.frames, o.steps,
                         o.guidance, o.seed)
    _save_png(image_grid(to_uint8(images).cpu(), columns=args.frames, scale=args.scale), args.out)
    print(f"{args.frames} frames: {args.out}")
    return 0


def run_variations(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from clipforge.data.images import ImageDataset, collate_images
    from clipforge.errors import ConfigError
    from clipforge.generation.diffusion import to_uint8
    from clipforge.images.decode import open_image
    from clipforge.images.grid import image_grid

    model = _load_generator(args.model, args.device)
    if model.arch != "unclip":
        raise ConfigError(f"--model {args.model}: variations need an unclip generator (a decoder of image "
                          "embeddings)")
    batch = collate_images([ImageDataset(args.images, model.preprocess)[i] for i in range(len(args.images))])
    for s in batch.skipped:
        raise ConfigError(f"{s.source}: cannot read the image ({s.detail or s.reason})")
    o = _options(args)
    out = model.variations(batch.images, n=o.n, generator=torch.Generator().manual_seed(o.seed), steps=o.steps,
                           sampler=o.sampler, guidance=o.guidance, eta=o.eta)
    size = model.decoder.config.image_size
    originals = []
    for path in args.images:
        img = open_image(path).resize((size, size))
        originals.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
    rows = []
    for i, original in enumerate(originals):
        rows += [original, *to_uint8(out[i * o.n:(i + 1) * o.n]).cpu()]
    _save_png(image_grid(torch.stack(rows), columns=o.n + 1, scale=args.scale), args.out)
    print(f"{len(args.images)} image(s) x {o.n} variation(s): {args.out} (the original first in each row)")
    return 0


def run_style(args: argparse.Namespace) -> int:
    import torch

    from clipforge.data.images import ImageDataset, Uint8Crop, collate_images
    from clipforge.errors import ConfigError
    from clipforge.generation.diffusion import to_uint8
    from clipforge.generation.sample import check_prompts
    from clipforge.images.grid import image_grid

    model = _load_generator(args.model, args.device)
    if model.arch != "text_gan" or model.style is None:
        raise ConfigError(f"--model {args.model}: style transfer needs a GAN trained with a style encoder "
                          "(gan.style_share > 0)")
    prompts = check_prompts(model, list(args.prompts))
    data = ImageDataset(list(args.style), Uint8Crop(model.config.image_size))
    batch = collate_images([data[i] for i in range(len(data))])
    for s in batch.skipped:
        raise ConfigError(f"{s.source}: cannot read the image ({s.detail or s.reason})")
    x = batch.images.float() / 127.5 - 1
    rows = []
    for original in x:
        redrawn = model.style_transfer(original[None].expand(len(prompts), -1, -1, -1), prompts)
        rows += [to_uint8(original[None]), to_uint8(redrawn).cpu()]
    _save_png(image_grid(torch.cat(rows), columns=len(prompts) + 1, scale=args.scale), args.out)
    print(f"{len(args.style)} image(s) x {len(prompts)} prompt(s): {args.out} (the original first in each row)")
    return 0


def run_reconstruct(args: argparse.Namespace) -> int:
    import torch

    from clipforge.checkpoints import load
    from clipforge.data.images import ImageDataset, Uint8Crop, collate_images
    from clipforge.engine.distributed import DistInfo, default_device
    from clipforge.errors import ConfigError
    from clipforge.generation.diffusion import to_uint8
    from clipforge.generation.image_tokenizer import ImageTokenizer, codebook_usage
    from clipforge.images.grid import image_grid

    model = load(args.model)
    if not isinstance(model, ImageTokenizer):
        raise ConfigError(f"--model {args.model}: a {getattr(model, 'arch', type(model).__name__)}, not an image "
                          "tokenizer (generate train --method dvae|vqvae makes one)")
    model = model.to(default_device(DistInfo(), args.device)).eval()
    data = ImageDataset(list(args.images), Uint8Crop(model.config.image_size))
    batch = collate_images([data[i] for i in range(len(data))])
    for s in batch.skipped:
        raise ConfigError(f"{s.source}: cannot read the image ({s.detail or s.reason})")
    x = batch.images.float().to(next(model.parameters()).device) / 127.5 - 1
    with torch.no_grad():
        tokens = model.encode(x)
        recon = model.decode(tokens).clamp(-1, 1)
    mse = float(((recon - x) ** 2).mean())
    usage = codebook_usage(tokens, model.codebook_size)
    rows = torch.stack([to_uint8(x).cpu(), to_uint8(recon).cpu()], 1).flatten(0, 1)
    _save_png(image_grid(rows, columns=2, scale=args.scale), args.out)
    print(f"{len(args.images)} image(s) as {model.grid}x{model.grid} tokens: MSE {mse:.4f} (pixels in [-1, 1]), "
          f"{usage['used']} of {model.codebook_size} codes used: {args.out}")
    return 0


def _save_png(img, path: str) -> None:
    import os
    from pathlib import Path

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, out)
