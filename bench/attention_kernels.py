"""Attention's forward + backward with each CPU kernel PyTorch has for ``F.scaled_dot_product_attention``:
flash attention (PyTorch's pick on the CPU) against the plain math kernel, in fp32 and in bf16 (what
bf16 autocast hands the attention), at the shapes of CLIP's towers, with each kernel's relative
error (output and query gradient) against the attention in float64. The figures behind the
engine's ``attention=auto`` (clipforge/engine/attention.py).

    .venv/bin/python bench/attention_kernels.py                # 1 and 2 threads
    .venv/bin/python bench/attention_kernels.py --threads 1 --min-time 0.5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

# (label, batch, heads, tokens, head dim, causal)
SHAPES = [
    ("the demo's text tower (batch 128)", 128, 4, 32, 32, True),
    ("ViT-B/32 image tower (batch 32)", 32, 12, 50, 64, False),
    ("text tower at 77 tokens (batch 32)", 32, 8, 77, 64, True),
    ("ViT-B/16 image tower (batch 16)", 16, 12, 197, 64, False),
    ("ViT-L/14 image tower (batch 8)", 8, 16, 257, 64, False),
    ("ViT-L/14 at 336 px (batch 4)", 4, 16, 577, 64, False),
]


def forward_backward_ms(backend, dtype, batch: int, heads: int, tokens: int, dim: int, causal: bool,
                        min_time: float) -> float:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    from common import timeit

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, heads, tokens, dim, generator=gen).to(dtype).requires_grad_() for _ in range(3))
    grad = torch.randn(batch, heads, tokens, dim, generator=gen).to(dtype)

    def step() -> None:
        with sdpa_kernel(backend):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        out.backward(grad)
        q.grad = k.grad = v.grad = None

    return 1e3 * timeit(step, min_time=min_time, min_reps=3, warmup=2)


def relative_error(backend, dtype, batch: int, heads: int, tokens: int, dim: int, causal: bool) -> float:
    """The larger of the output's and the query gradient's relative error (norm of the difference over
    the norm) against the same attention in float64."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, heads, tokens, dim, generator=gen, dtype=torch.float64) for _ in range(3))
    grad = torch.randn(batch, heads, tokens, dim, generator=gen, dtype=torch.float64)

    def run(be, dt) -> tuple[torch.Tensor, torch.Tensor]:
        qq, kk, vv = (t.to(dt, copy=True).requires_grad_() for t in (q, k, v))
        with sdpa_kernel(be):
            out = F.scaled_dot_product_attention(qq, kk, vv, is_causal=causal)
        out.backward(grad.to(dt))
        return out.double(), qq.grad.double()

    ref = run(SDPBackend.MATH, torch.float64)
    got = run(backend, dtype)
    return max(((a - b).norm() / b.norm()).item() for a, b in zip(got, ref))


def main() -> None:
    import torch
    from torch.nn.attention import SDPBackend

    from common import machine, markdown_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per figure (the median call is kept)")
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            for label, b, h, n, d, causal in SHAPES:
                flash = forward_backward_ms(SDPBackend.FLASH_ATTENTION, dtype, b, h, n, d, causal, args.min_time)
                math = forward_backward_ms(SDPBackend.MATH, dtype, b, h, n, d, causal, args.min_time)
                errors = [relative_error(be, dtype, b, h, n, d, causal)
                          for be in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH)]
                rows.append([label, n, name, threads, f"{flash:.1f}", f"{math:.1f}", f"{flash / math:.2f}x",
                             " / ".join(f"{e:.1e}" for e in errors)])
                print(" | ".join(str(c) for c in rows[-1]), flush=True)
    print()
    print(markdown_table(["attention", "tokens", "dtype", "threads", "flash ms", "math ms",
                          "math's speed-up", "error vs float64, flash / math"], rows))


if __name__ == "__main__":
    main()
