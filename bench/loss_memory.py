"""Peak memory and time of the CLIP and SigLIP losses' forward + backward: naive (N x N logits) vs tiled.

Each measurement runs in a fresh child process whose address space is capped (``--limit-gb``,
default 22 on a 24 GB machine): a loss that does not fit fails its allocation there and is
reported as out of memory, without waking the machine's OOM killer. "extra MB" is the peak
resident memory above what the process held once the embeddings existed (features x, y and their
gradients, 4 N d floats, are "embeddings+grads MB"); "tiled peak / embeddings+grads" is
(embeddings+grads + extra) / embeddings+grads, the goal being at most 2. Up to N = 8192 a warm-up
call runs first and the second call is measured (first calls pay one-off kernel set-up).

    .venv/bin/python bench/loss_memory.py                       # both losses, N = 1k .. 64k, d = 512, 2 threads
    .venv/bin/python bench/loss_memory.py --loss siglip --sizes 1024 4096 --threads 1
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _worker(loss: str, kind: str, n: int, d: int, threads: int, limit_gb: float, q: mp.Queue) -> None:
    limit = int(limit_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        import torch
        import torch.nn.functional as F

        from clipforge.losses import clip_loss, siglip_loss
        from clipforge.losses.tiled import tiled_clip_loss, tiled_siglip_loss

        torch.set_num_threads(threads)
        g = torch.Generator().manual_seed(0)
        x = F.normalize(torch.randn(n, d, generator=g), dim=-1).requires_grad_()
        y = F.normalize(torch.randn(n, d, generator=g), dim=-1).requires_grad_()
        ls = torch.tensor(2.6, requires_grad=True)
        bias = torch.tensor(-10.0, requires_grad=True)
        x.grad, y.grad = torch.zeros_like(x), torch.zeros_like(y)  # count the gradients as held memory
        fn = {("clip", "naive"): lambda: clip_loss(x, y, ls.exp()),
              ("clip", "tiled"): lambda: tiled_clip_loss(x, y, ls.exp()),
              ("siglip", "naive"): lambda: siglip_loss(x, y, ls.exp(), bias),
              ("siglip", "tiled"): lambda: tiled_siglip_loss(x, y, ls.exp(), bias)}[(loss, kind)]

        def step() -> None:
            fn().backward()

        if n <= 8192:
            step()  # warm-up: first calls pay one-off kernel set-up that would dominate small sizes
        base = _rss_mb()
        t0 = time.perf_counter()
        step()
        sec = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        q.put(("ok", sec, peak - base))
    except (RuntimeError, MemoryError) as e:
        q.put(("oom", 0.0, str(e).splitlines()[0][:80]))


def measure(loss: str, kind: str, n: int, d: int, threads: int, limit_gb: float):
    # Every allocation over 64 KB is its own mmap, returned to the system when freed: resident
    # memory then follows the live tensors, and peak RSS - baseline is the loss's own peak.
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_worker, args=(loss, kind, n, d, threads, limit_gb, q))
    p.start()
    p.join()
    return q.get() if not q.empty() else ("oom", 0.0, f"killed (exit {p.exitcode})")


def main() -> None:
    from common import machine, markdown_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[1024, 2048, 4096, 8192, 16384, 32768, 65536])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit-gb", type=float, default=22.0)
    parser.add_argument("--loss", choices=("clip", "siglip", "both"), default="both")
    args = parser.parse_args()
    print(f"machine: {machine()}; torch threads {args.threads}; address-space cap {args.limit_gb} GB\n")
    for loss in ("clip", "siglip") if args.loss == "both" else (args.loss,):
        print(f"{loss} loss:")
        rows = _table(loss, args)
        print()
        print(markdown_table(["N", "embeddings+grads MB", "naive extra MB", "tiled extra MB",
                              "tiled peak / embeddings+grads", "naive s", "tiled s", "tiled / naive time"], rows))
        print()


def _table(loss: str, args: argparse.Namespace) -> list[list]:
    rows = []
    naive_fits = True
    for n in args.sizes:
        emb_mb = 4 * n * args.dim * 4 / 2**20
        res = {}
        for kind in ("naive", "tiled"):
            if kind == "naive" and not naive_fits:
                res[kind] = ("oom", 0.0, "a smaller N already did not fit")
                continue
            res[kind] = measure(loss, kind, n, args.dim, args.threads, args.limit_gb)
            if kind == "naive" and res[kind][0] != "ok":
                naive_fits = False
        nv, tl = res["naive"], res["tiled"]
        naive_t = f"{nv[1]:.2f}" if nv[0] == "ok" else "OOM"
        naive_m = f"{nv[2]:.0f}" if nv[0] == "ok" else "OOM"
        tiled_t = f"{tl[1]:.2f}" if tl[0] == "ok" else "OOM"
        tiled_m = f"{tl[2]:.0f}" if tl[0] == "ok" else "OOM"
        mem_ratio = f"{(emb_mb + tl[2]) / emb_mb:.2f}" if tl[0] == "ok" else "-"
        time_ratio = f"{tl[1] / nv[1]:.2f}" if tl[0] == nv[0] == "ok" else "-"
        rows.append([n, f"{emb_mb:.0f}", naive_m, tiled_m, mem_ratio, naive_t, tiled_t, time_ratio])
        print(" | ".join(str(c) for c in rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main()
