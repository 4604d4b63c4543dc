"""What the demo's recipe learns from the same data, over seeds, with each recipe change as a row.

Each row trains the demo's CLIP (``clipforge.demo.demo_config``: the small modified ResNet, or the
small ViT with ``--model vit``) on the demo's synthetic scenes for the same number of epochs, once
per seed, with the row's options changed from the recipe before issue 21 (``today``; ``recipe`` is
the demo's now); all rows are evaluated by the same code after every epoch
(64-way zero-shot on seen and held-out colour-shape combinations, retrieval on the 1,000 validation
scenes). Every figure is the mean ± the sample standard deviation over the seeds.

Columns beyond the last epoch's figures:
* held-out over the last 3 epochs (the demo prints the same), so one lucky epoch is not the figure;
* held-out at the epoch with the best validation retrieval (checkpoint selection; the retrieval figure
  of that epoch is then chosen on the set it is reported on, so only the held-out column is fair);
* for rows with ``ema=...``, the last epoch of the trained weights themselves (``online``).

Runs go ``--jobs`` at a time, each with cores / jobs torch threads; an epoch budget makes the learning
figures independent of how busy the machine is (the seconds column is not: it is a rough guide only).

    .venv/bin/python bench/learning.py                                   # every row, 3 seeds, 12 epochs
    .venv/bin/python bench/learning.py --rows today decay-emb --epochs 6
    .venv/bin/python bench/learning.py --rows today "today:optim.lr=2e-3,optim.warmup_steps=100"
    .venv/bin/python bench/learning.py --model vit --rows today recipe
    .venv/bin/python bench/learning.py --rows today recipe --time-steps 156   # speed alone, no evaluation
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from clipforge.demo import DEMO_RECIPE

sys.path.insert(0, str(Path(__file__).parent))

# Each lever as options of `clipforge train` (dotted keys, YAML values) over the demo's configuration
# before issue 21 ("today"); "recipe" is what the demo uses now (clipforge.demo.DEMO_RECIPE).
RECIPES: dict[str, list[str]] = {
    "today": [],
    "recipe": DEMO_RECIPE,  # the demo also trains DEMO_EPOCHS (15) epochs: "recipe:epochs=15"
    "decay-emb": ["optim.decay_embeddings=true"],                        # open_clip's weight-decay rule
    "whole-image": ["data.crop_scale=[1, 1]", "data.crop_ratio=[1, 1]"],  # no crop: every object kept
    "phrasings": ["data.caption_column=phrasings", "data.caption_split=' | '"],  # a phrasing drawn per epoch
    "siglip": ["loss=siglip"],
    "ema": ["ema=0.995"],
    "bf16": ["precision=bf16", "channels_last=true"],
    "lr2e-3": ["optim.lr=2e-3"],
}
METRICS = {"seen": "seen/acc1", "held-out": "heldout/acc1",
           "t2i R@1": "val/image_retrieval_recall@1", "t2i R@5": "val/image_retrieval_recall@5",
           "t2i R@10": "val/image_retrieval_recall@10", "i2t R@1": "val/text_retrieval_recall@1",
           "i2t R@5": "val/text_retrieval_recall@5", "i2t R@10": "val/text_retrieval_recall@10"}


def parse_row(text: str) -> tuple[str, list[str]]:
    """``name`` (one of RECIPES) or ``name:key=value,key=value`` (a known name is the base)."""
    if ":" not in text:
        if text not in RECIPES:
            raise SystemExit(f"unknown row {text!r}; known: {', '.join(RECIPES)} (or name:key=value,...)")
        return text, RECIPES[text]
    name, spec = text.split(":", 1)
    return text, RECIPES.get(name, []) + [kv for kv in re.split(r",(?![^\[]*\])", spec) if kv]


def ensure_data(data: Path) -> Path:
    """The demo's scenes (same sizes and seed), written once; rewritten if they lack the phrasings column."""
    from clipforge.data.synthetic import SynthConfig, write_dataset
    from clipforge.demo import reusable_data

    if not reusable_data(data, SynthConfig()):
        print(f"writing the demo's synthetic scenes to {data}", flush=True)
        write_dataset(data, SynthConfig(), progress=False)
    return data


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (row, seed) and return its per-epoch evaluations (in a worker process)."""
    import torch

    from clipforge.config import apply_overrides
    from clipforge.demo import DEMO_MODELS, demo_config
    from clipforge.training.config import TrainConfig
    from clipforge.training.trainer import train

    torch.set_num_threads(job["threads"])
    logging.getLogger("clipforge").setLevel(logging.WARNING)  # the table is the output, not every epoch's line
    out = Path(job["work"]) / f"{re.sub(r'[^A-Za-z0-9]+', '_', job['row'])}-{job['seed']}"
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, not the rest of an earlier one
    base = demo_config(Path(job["data"]), out, job["epochs"], DEMO_MODELS[job["model"]], recipe=[]).to_dict()
    base.update(seed=job["seed"], threads=job["threads"], tensorboard=False, keep_checkpoints=1)
    config = TrainConfig.from_dict(apply_overrides(base, job["options"]))
    t0 = time.perf_counter()
    result = train(config, progress=False)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return {"row": job["row"], "seed": job["seed"], "seconds": time.perf_counter() - t0,
            "steps": result.state.step, "evals": result.state.evals,
            "samples_per_s": json.loads(lines[-1])["samples_per_s"] if lines else None}


def time_rows(rows: list[tuple[str, list[str]]], args: argparse.Namespace, data: Path) -> None:
    """Training speed alone on the machine: each row's first ``--time-steps`` steps (data loading
    included, no evaluation), rows alternating, ``--repeats`` times; the median per row."""
    from common import markdown_table

    threads = len(os.sched_getaffinity(0))
    rates: dict[str, list[float]] = {label: [] for label, _ in rows}
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        for rep in range(args.repeats):
            for label, options in rows:
                job = {"row": label, "options": options + [f"max_steps={args.time_steps}", "eval_every_epochs=0"],
                       "seed": 0, "model": args.model, "epochs": args.epochs, "data": str(data),
                       "work": str(args.work / "timing"), "threads": threads}
                rates[label].append(pool.submit(run_one, job).result()["samples_per_s"])
                print(json.dumps({"row": label, "repeat": rep, "samples_per_s": rates[label][-1]}), flush=True)
    base = statistics.median(rates[rows[0][0]])
    print()
    print(markdown_table(["row", "samples/s (median)", "runs", "vs first row",
                          f"epochs in the minutes of {args.epochs} of the first row"],
                         [[label, f"{statistics.median(r):.0f}", " / ".join(f"{x:.0f}" for x in r),
                           f"{statistics.median(r) / base:.2f}x", f"{args.epochs * statistics.median(r) / base:.1f}"]
                          for label, r in rates.items()]))


def summarise(run: dict[str, Any]) -> dict[str, float]:
    """One run's figures: the last epoch's, the last 3 epochs' held-out mean, the held-out figure at
    the epoch of best validation retrieval, and the online weights' last epoch when there is an EMA."""
    evals = run["evals"]
    last = evals[-1]
    out = {name: last[key] for name, key in METRICS.items()}
    out["held-out, last 3"] = statistics.fmean(e["heldout/acc1"] for e in evals[-3:])
    best = max(evals, key=lambda e: e[METRICS["t2i R@1"]] + e[METRICS["i2t R@1"]])
    out["held-out at best val"] = best["heldout/acc1"]
    if "online/heldout/acc1" in last:
        out["online held-out"] = last["online/heldout/acc1"]
        out["online t2i R@1"] = last["online/" + METRICS["t2i R@1"]]
    out["minutes"] = run["seconds"] / 60
    return out


def cell(values: list[float], percent: bool = True) -> str:
    fmt = (lambda v: f"{100 * v:.1f}") if percent else (lambda v: f"{v:.1f}")
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.fmean(values))} ± {fmt(statistics.stdev(values))}"


def main() -> None:
    from common import machine, markdown_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=list(RECIPES))
    parser.add_argument("--model", choices=("resnet", "vit"), default="resnet")
    parser.add_argument("--epochs", type=int, default=12, help="training epochs per run (the demo's: 12)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--data", type=Path, default=Path("outputs/bench-learning/data"))
    parser.add_argument("--work", type=Path, default=Path("outputs/bench-learning/runs"))
    parser.add_argument("--time-steps", type=int, default=0,
                        help="instead: time each row's first N steps alone (all cores, rows alternating)")
    parser.add_argument("--repeats", type=int, default=3, help="with --time-steps: runs per row")
    parser.add_argument("--out", type=Path, help="write every run's per-epoch evaluations here (JSON); runs "
                        "already in it (same row and seed) are kept, not trained again")
    args = parser.parse_args()
    rows = [parse_row(r) for r in args.rows]
    data = ensure_data(args.data)
    if args.time_steps:
        print(f"machine: {machine()}; model {args.model}; the first {args.time_steps} steps of each row, "
              f"{args.repeats} times, alone\n", flush=True)
        time_rows(rows, args, data)
        return
    threads = max(1, len(os.sched_getaffinity(0)) // args.jobs)
    print(f"machine: {machine()}; model {args.model}; {args.epochs} epochs; {args.seeds} seeds; "
          f"{args.jobs} runs at a time, {threads} threads each\n", flush=True)
    labels = {label for label, _ in rows}
    runs: list[dict[str, Any]] = []
    if args.out and args.out.is_file():  # an interrupted bench keeps its finished runs
        saved = json.loads(args.out.read_text())
        if saved["args"]["model"] == args.model and saved["args"]["epochs"] == str(args.epochs):
            runs = [r for r in saved["runs"] if r["row"] in labels and r["seed"] < args.seeds]
    done = {(r["row"], r["seed"]) for r in runs}
    jobs = [{"row": label, "options": options, "seed": seed, "model": args.model, "epochs": args.epochs,
             "data": str(data), "work": str(args.work), "threads": threads}
            for seed in range(args.seeds) for label, options in rows if (label, seed) not in done]
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        for run in pool.map(run_one, jobs):
            runs.append(run)
            print(json.dumps({"row": run["row"], "seed": run["seed"], **summarise(run)}), flush=True)
            if args.out:
                args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                "runs": runs}, indent=1))
    columns = list(dict.fromkeys(c for r in runs for c in summarise(r)))
    table = []
    for label, _ in rows:
        figures = [summarise(r) for r in runs if r["row"] == label]
        table.append([label.replace("|", "\\|")] + [cell([f[c] for f in figures if c in f], c != "minutes")
                                if any(c in f for f in figures) else "" for c in columns])
    print()
    print(markdown_table(["row"] + columns, table))
    # Rows share each seed's initialisation and data order, so the paired differences are the test.
    first, paired = rows[0][0], ["seen", "held-out", "held-out, last 3", "t2i R@1", "t2i R@5", "i2t R@1", "i2t R@5"]
    by_seed = {(r["row"], r["seed"]): summarise(r) for r in runs}
    diffs = []
    for label, _ in rows[1:]:
        seeds = [s for (row, s) in by_seed if row == label and (first, s) in by_seed]
        diffs.append([label.replace("|", "\\|")] + [
            cell([by_seed[label, s][c] - by_seed[first, s][c] for s in seeds]) if seeds else "" for c in paired])
    print(f"\ndifference from {first!r} with the same seed (points; mean ± sd over seeds)\n")
    print(markdown_table(["row"] + paired, diffs))


if __name__ == "__main__":
    main()
