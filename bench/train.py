"""Training throughput: clipforge's training step vs a plain reference loop, same model, same run.

The reference is the loop a user would write (forward both towers, CLIP loss from
``F.cross_entropy`` on the logits, backward, AdamW step). clipforge's step is the trainer's
(``contrastive_backward`` + gradient clipping + AdamW + temperature clamp), with the full batch and
with exact micro-batching (GradCache). Each configuration runs in a fresh process, so "peak RSS"
is that configuration's own peak resident memory. The loss's own memory, naive and tiled, is
measured by bench/loss_memory.py.

    .venv/bin/python bench/train.py                 # demo model (64 px ViT), batch 128
    .venv/bin/python bench/train.py --batch 256 --steps 5
    .venv/bin/python bench/train.py --data outputs/demo/data   # the whole step on the demo's data

With ``--data``, the whole step (data loading included) of the plain loop and of ``clipforge train``
on the demo's configuration (bench/train_whole_step.py); with ``--data DIR --profile``, where the
demo recipe's step spends its wall-clock, by phase and by the profiler's operations. The same
comparison under torchrun with 2 gloo processes: ``bench/gloo_train.py --table``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def _model(vocab: int = 512, context: int = 32):
    from clipforge.models import CLIP, CLIPConfig, get_config

    d = get_config("tiny-vit-32").to_dict()
    d["vision"].update(image_size=64, patch_size=8)
    d["text"].update(vocab_size=vocab, context_length=context)
    return CLIP(CLIPConfig.from_dict(d))


def _worker(kind: str, threads: int, batch: int, steps: int, micro: int | None, q: mp.Queue) -> None:
    import torch
    import torch.nn.functional as F

    from clipforge.engine.schedule import param_groups
    from clipforge.losses import clip_loss
    from clipforge.training.task import contrastive_backward

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = _model().train()
    images = torch.randn(batch, 3, 64, 64)
    tokens = torch.randint(1, 500, (batch, 32))
    tokens[:, 12] = 511
    if kind == "reference":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step() -> None:
            opt.zero_grad()
            img = F.normalize(model.visual(images), dim=-1)
            txt = F.normalize(model.text(tokens), dim=-1)
            logits = model.logit_scale.exp() * img @ txt.T
            labels = torch.arange(batch)
            loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
            loss.backward()
            opt.step()
    else:
        opt = torch.optim.AdamW(param_groups(model, 0.2), lr=1e-4)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            contrastive_backward(model, images, tokens, clip_loss, micro)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            model.clamp_logit_scale_()

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sec = (time.perf_counter() - t0) / steps
    q.put((batch / sec, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def measure(kind: str, threads: int, batch: int, steps: int, micro: int | None) -> tuple[float, float]:
    from common import in_fresh_process

    return in_fresh_process(_worker, kind, threads, batch, steps, micro)


def main() -> None:
    from common import machine, markdown_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 4; with --data 60)")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--data", default=None, help="the demo's data folder: time the whole step on it")
    parser.add_argument("--repeats", type=int, default=3, help="with --data: runs per row")
    parser.add_argument("--profile", action="store_true",
                        help="with --data: where the recipe's step spends its time, by phase and operation")
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    if args.data:
        from train_whole_step import WARMUP, profile_table, whole_step_table

        if args.profile:
            print(profile_table(args.data, args.threads, args.steps or 30))
            return
        steps = args.steps or 60
        print(f"steps {WARMUP}-{steps} of each row (steady state), batch 128\n")
        print(whole_step_table(args.data, args.threads, steps, args.repeats))
        return
    rows = []
    for threads in args.threads:
        base, _ = None, None
        for kind, micro in (("reference", None), ("clipforge", None), ("clipforge", args.batch // 4)):
            rate, rss = measure(kind, threads, args.batch, args.steps or 4, micro)
            base = base or rate
            label = kind if micro is None else f"{kind}, micro-batch {micro}"
            rows.append([label, threads, args.batch, f"{rate:.1f}", f"{rate / base:.2f}", f"{rss:.0f}"])
            print(" | ".join(str(c) for c in rows[-1]), flush=True)
    print()
    print(markdown_table(["loop", "threads", "batch", "samples/s", "vs reference", "peak RSS MB"], rows))


if __name__ == "__main__":
    main()
