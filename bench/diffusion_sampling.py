"""Diffusion sampling speed: DDPM (all T steps) against DDIM (25, 50, 100 steps), with and without
classifier-free guidance, same model, same run.

A ``CLIPDiffusion`` with the default denoiser (random weights: speed does not depend on them) at
``--size`` px; samples/s is the batch over the median wall time of ``--repeats`` runs. Guidance
evaluates the conditional and unconditional halves in one forward of a doubled batch, so it costs
one call per step, not two (the bench counts the calls). Runs on CUDA with ``--device cuda``.

    .venv/bin/python bench/diffusion_sampling.py
    .venv/bin/python bench/diffusion_sampling.py --device cuda --size 64 --batch 64
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
    from clipforge.generation.diffusion import CLIPDiffusion, DiffusionConfig
    from common import machine, markdown_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ddpm-repeats", type=int, default=1, help="DDPM's 1000 steps take long: fewer repeats")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"machine: {machine()}; torch threads: {args.threads}; device {device}\n")
    torch.manual_seed(0)
    model = CLIPDiffusion(DiffusionConfig(image_size=args.size, clip_dim=128)).to(device).eval()
    cond = torch.nn.functional.normalize(torch.randn(args.batch, 128), dim=-1).to(device)
    calls: list[int] = []
    model.unet.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    params = sum(p.numel() for p in model.parameters())
    print(f"denoiser: {params / 1e6:.2f}M parameters, {args.size} px, batch {args.batch}\n")
    model.sample(cond[:2], steps=2)  # warm up
    rows = []
    for sampler, steps in (("ddim", 25), ("ddim", 50), ("ddim", 100), ("ddpm", 1000)):
        for guidance in (1.0, 3.0):
            times = []
            for _ in range(args.ddpm_repeats if sampler == "ddpm" else args.repeats):
                calls.clear()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                model.sample(cond, steps=steps, sampler=sampler, guidance=guidance)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            rate = args.batch / statistics.median(times)
            rows.append([f"{sampler.upper()} {steps}", "yes (s=3)" if guidance != 1.0 else "no", len(calls),
                         max(calls), f"{rate:.2f}"])
            print(" | ".join(str(c) for c in rows[-1]), flush=True)
    print()
    print(markdown_table(["sampler", "guidance", "denoiser calls", "batch per call", "samples/s"], rows))


if __name__ == "__main__":
    main()
