"""The whole training step on the demo's data (decode, crop, tokenise, forward, loss, backward, AdamW):
a plain reference loop against ``clipforge train``; run through ``bench/train.py --data DIR``.

The reference is the loop a user writes around the same dataset (clipforge's ``PairDataset``: the same
decoding, crops and tokenizer), a ``DataLoader`` in the training process, the CLIP loss from
``F.cross_entropy``, AdamW; optionally under bf16 autocast. clipforge's rows are ``train()`` with the
demo's config and the options named. Both rates are the steady state: samples over the wall-clock
from the end of step ``WARMUP`` to the end of step ``steps`` (for clipforge, from the engine's own
``samples_per_s`` log lines at those steps), in a fresh process per run, rows alternating; the
table gives the median of the repeats.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import statistics
import tempfile
import time
from pathlib import Path

WARMUP = 20  # steps left out of the rate: the first steps build kernels and fill caches
ROWS: list[tuple[str, str, list[str]]] = [
    ("reference loop, fp32", "reference", ["precision=fp32"]),
    ("reference loop, bf16 autocast", "reference", ["precision=bf16"]),
    ("clipforge train, fp32, no prefetch", "clipforge", ["precision=fp32", "channels_last=false", "data.prefetch=0"]),
    ("clipforge train, fp32", "clipforge", ["precision=fp32", "channels_last=false"]),
    ("clipforge train, the demo's recipe with PyTorch's attention kernel (attention=default)", "clipforge",
     ["attention=default"]),
    ("clipforge train, the demo's recipe (precision=auto, channels_last, attention=auto)", "clipforge", []),
]


def _config(data: str, out: str, options: list[str], steps: int, threads: int):
    from clipforge.config import apply_overrides
    from clipforge.demo import DEMO_RECIPE, demo_config
    from clipforge.training.config import TrainConfig

    d = demo_config(Path(data), Path(out), recipe=DEMO_RECIPE).to_dict()
    d.update(threads=threads, tensorboard=False, eval_every_epochs=0, max_steps=steps, log_every_steps=WARMUP,
             keep_checkpoints=1)
    return TrainConfig.from_dict(apply_overrides(d, options))


def _setup(config):
    """The plain loop's model, loader and optimiser over the demo's data."""
    import torch
    from torch.utils.data import DataLoader

    from clipforge.data.pairs import PairDataset, caption_options, collate, read_pairs
    from clipforge.training.task import training_preprocess
    from clipforge.training.trainer import build_model, build_tokenizer

    pairs, _ = read_pairs(config.data.train, config.data.image_column, config.data.caption_column)
    split = config.data.caption_split
    tokenizer = build_tokenizer(config, [c for p in pairs for c in caption_options(p.caption, split)])
    torch.manual_seed(0)
    model = build_model(config, tokenizer).train()
    data = PairDataset(pairs, training_preprocess(config, model.preprocess), tokenizer, train=True, seed=0,
                       caption_split=config.data.caption_split)
    loader = DataLoader(data, batch_size=config.batch_size, shuffle=True, drop_last=True, collate_fn=collate)
    opt = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    return model, loader, opt


def _clip_loss(model, images, tokens):
    import torch
    import torch.nn.functional as F

    img = F.normalize(model.encode_image(images), dim=-1)
    txt = F.normalize(model.encode_text(tokens), dim=-1)
    logits = (model.logit_scale.exp() * img @ txt.T).float()
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _reference(config, steps: int) -> float:
    import contextlib

    import torch

    model, loader, opt = _setup(config)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if config.precision == "bf16"
                else contextlib.nullcontext())
    t0, seen0, seen = 0.0, 0, 0
    for i, batch in enumerate(loader):
        opt.zero_grad()
        with autocast:
            loss = _clip_loss(model, batch.images, batch.tokens)
        loss.backward()
        opt.step()
        seen += len(batch)
        if i + 1 == WARMUP:
            t0, seen0 = time.perf_counter(), seen
        if i + 1 == steps:
            break
    return (seen - seen0) / (time.perf_counter() - t0)


def _phases(config, steps: int, attention: str) -> dict:
    """The demo's recipe (bf16 autocast, channels-last) in the plain loop with ``attention``'s kernel:
    milliseconds per step in each phase over ``steps`` steps after the warm-up, and the profiler's
    heaviest operations over 5 more."""
    import torch
    from torch.profiler import profile

    from clipforge.engine.attention import attention_kernel

    model, loader, opt = _setup(config)
    model.visual.to(memory_format=torch.channels_last)
    totals = {"data loading": 0.0, "forward and loss": 0.0, "backward": 0.0, "optimiser": 0.0}
    batches = iter(loader)

    def step(timed: bool) -> None:
        t = [time.perf_counter()]
        batch = next(batches)
        images = batch.images.contiguous(memory_format=torch.channels_last)
        t.append(time.perf_counter())
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16), attention_kernel(attention):
            loss = _clip_loss(model, images, batch.tokens)
        t.append(time.perf_counter())
        loss.backward()
        t.append(time.perf_counter())
        opt.step()
        t.append(time.perf_counter())
        if timed:
            for name, a, b in zip(totals, t, t[1:]):
                totals[name] += 1000 * (b - a) / steps

    for _ in range(WARMUP // 2):
        step(False)
    for _ in range(steps):
        step(True)
    with profile() as prof:
        for _ in range(5):
            step(False)
    ops = prof.key_averages()
    whole = sum(op.self_cpu_time_total for op in ops)
    top = sorted(ops, key=lambda op: op.self_cpu_time_total, reverse=True)[:5]
    return {"phases": totals, "top": [(op.key, op.self_cpu_time_total / whole) for op in top]}


def _clipforge(config) -> float:
    from clipforge.training.trainer import train

    train(config, progress=False)
    lines = [json.loads(x) for x in (Path(config.out_dir) / "metrics.jsonl").read_text().splitlines()]
    # The engine's rate is from the start of the epoch: seconds at a step = samples so far / rate.
    at = {r["step"]: (r["step"] * config.batch_size, r["step"] * config.batch_size / r["samples_per_s"])
          for r in lines if "samples_per_s" in r}
    (s0, t0), (s1, t1) = at[WARMUP], at[max(at)]
    return (s1 - s0) / (t1 - t0)


def _worker(kind: str, data: str, options: list[str], steps: int, threads: int, q: mp.Queue) -> None:
    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as out:
        config = _config(data, out, options, steps, threads)
        if kind.startswith("phases:"):
            q.put(_phases(config, steps, kind.removeprefix("phases:")))
        else:
            q.put(_reference(config, steps) if kind == "reference" else _clipforge(config))


def measure(kind: str, data: str, options: list[str], steps: int, threads: int) -> float:
    from common import in_fresh_process

    return in_fresh_process(_worker, kind, data, options, steps, threads)


def whole_step_table(data: str, threads_list: list[int], steps: int, repeats: int) -> str:
    from common import markdown_table

    if steps <= WARMUP:
        raise SystemExit(f"--steps must be more than the {WARMUP} warm-up steps")
    table = []
    for threads in threads_list:
        rates: dict[str, list[float]] = {label: [] for label, _, _ in ROWS}
        for rep in range(repeats):
            for label, kind, options in ROWS:
                rates[label].append(measure(kind, data, options, steps, threads))
                print(json.dumps({"row": label, "threads": threads, "repeat": rep, "samples_per_s": rates[label][-1]}),
                      flush=True)
        base = statistics.median(rates[ROWS[0][0]])
        bf16 = statistics.median(rates[ROWS[1][0]])
        for label, r in rates.items():
            m = statistics.median(r)
            table.append([label, threads, f"{m:.0f}", " / ".join(f"{x:.0f}" for x in r), f"{m / base:.2f}x",
                          f"{m / bf16:.2f}x"])
    return markdown_table(["step", "threads", "samples/s (median)", "runs", "vs reference fp32",
                           "vs reference bf16"], table)


def profile_table(data: str, threads_list: list[int], steps: int) -> str:
    """Where the wall-clock of the recipe's step goes, with PyTorch's attention kernel and with the math
    kernel (what ``attention=auto`` takes under bf16 on the CPU)."""
    from common import markdown_table

    phase_rows, op_rows = [], []
    for threads in threads_list:
        got = {kernel: measure(f"phases:{kernel}", data, [], steps, threads) for kernel in ("default", "math")}
        for name in got["default"]["phases"]:
            cells = []
            for kernel in ("default", "math"):
                phases = got[kernel]["phases"]
                cells += [f"{phases[name]:.1f}", f"{100 * phases[name] / sum(phases.values()):.0f}%"]
            phase_rows.append([name, threads, *cells])
        phase_rows.append(["whole step", threads, *(f"{sum(got[k]['phases'].values()):.1f}" if i == 0 else ""
                                                    for k in ("default", "math") for i in (0, 1))])
        for kernel in ("default", "math"):
            op_rows += [[threads, kernel, op, f"{100 * share:.1f}%"] for op, share in got[kernel]["top"]]
    return (markdown_table(["phase", "threads", "ms/step, PyTorch's kernel", "share", "ms/step, math kernel", "share"],
                           phase_rows) + "\n\n"
            + markdown_table(["threads", "attention", "operation (profiler, self CPU time)", "share of the CPU time"],
                             op_rows))
