"""Training throughput under torchrun with gloo ranks on the CPU: the whole trainer, end to end.

Trains a small CLIP (the 64 px ViT of bench/train.py's size class) on 1,536 synthetic pairs, batch
128, for 2 epochs, with ``--world`` processes (1 torch thread each), and reports the samples/s the
trainer logs (its rate over each epoch, last logged value, median over ``--repeats`` runs).
``--table``: the plain reference loop (bench/gloo_reference.py: DDP, the same dataset class, features
gathered with their gradients, AdamW; its last epoch's rate) in fp32 and under bf16 autocast against
``clipforge train`` in fp32 and with ``precision=auto``, the rows alternating in each repeat.
``--src`` runs another checkout's code (e.g. the commit before the engine, for a before/after
figure in the same sitting).

    .venv/bin/python bench/gloo_train.py --world 2
    .venv/bin/python bench/gloo_train.py --options precision=auto   # clipforge train options on top
    .venv/bin/python bench/gloo_train.py --table    # against the plain DDP loop (bench/gloo_reference.py)
    git worktree add /tmp/before <commit> && .venv/bin/python bench/gloo_train.py --src /tmp/before/src
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def _rate(cmd: list[str], env: dict[str, str], read) -> float:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    if proc.returncode:
        sys.exit(proc.stderr[-2000:])
    return read()


def clipforge_rate(tmp: Path, cfg: dict, options: list[str], world: int, port: int, env: dict[str, str]) -> float:
    run = tmp / f"run{port}"
    (tmp / "cfg.json").write_text(json.dumps({**cfg, "out_dir": str(run)}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world), "--master-port",
           str(port), "-m", "clipforge.cli.main", "train", "--config", str(tmp / "cfg.json"), "--no-progress",
           *options]
    return _rate(cmd, env, lambda: json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["samples_per_s"])


def reference_rate(tmp: Path, cfg: dict, bf16: bool, world: int, port: int, env: dict[str, str]) -> float:
    (tmp / "cfg.json").write_text(json.dumps({**cfg, "out_dir": str(tmp / f"run{port}")}))
    out = tmp / f"reference{port}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world), "--master-port",
           str(port), str(Path(__file__).parent / "gloo_reference.py"), "--config", str(tmp / "cfg.json"),
           "--out", str(out), *(["--bf16"] if bf16 else [])]
    return _rate(cmd, env, lambda: json.loads(out.read_text())["samples_per_s"])


def main() -> None:
    from clipforge.data.synthetic import SynthConfig, write_dataset
    from common import machine

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--src", default=None, help="a checkout's src/ folder to import clipforge from")
    parser.add_argument("--options", nargs="*", default=[], metavar="KEY=VALUE", help="clipforge train options")
    parser.add_argument("--table", action="store_true", help="the plain DDP loop against clipforge train")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="clipforge-gloo-"))
    data = write_dataset(tmp / "data", SynthConfig(seed=0, image_size=64, n_train=1536, n_val=0,
                                                   n_zeroshot_per_class=0), progress=False)
    cfg = {"data": {"train": str(data / "train.csv")},
           "model": {"name": "tiny-vit-32", "tokenizer": "train", "vocab_size": 512, "context_length": 32,
                     "overrides": {"vision": {"image_size": 64, "patch_size": 8}}},
           "epochs": 2, "batch_size": 128, "eval_every_epochs": 0, "tensorboard": False, "log_every_steps": 12}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CLIPFORGE_THREADS": "1"}
    if args.src:
        env["PYTHONPATH"] = args.src
    if args.table:
        table(tmp, cfg, args.world, args.repeats, env)
        return
    rates = [clipforge_rate(tmp, cfg, args.options, args.world, 29600 + r, env) for r in range(args.repeats)]
    print(f"machine: {machine()}; code: {args.src or 'this checkout'}; {args.world} gloo process(es); "
          f"options: {' '.join(args.options) or 'none'}")
    print(f"samples/s per run: {', '.join(f'{x:.1f}' for x in rates)}; median {statistics.median(rates):.1f}")


def table(tmp: Path, cfg: dict, world: int, repeats: int, env: dict[str, str]) -> None:
    from common import machine, markdown_table

    rows = [("plain DDP loop, fp32", lambda port: reference_rate(tmp, cfg, False, world, port, env)),
            ("plain DDP loop, bf16 autocast", lambda port: reference_rate(tmp, cfg, True, world, port, env)),
            ("clipforge train, precision=fp32",
             lambda port: clipforge_rate(tmp, cfg, ["precision=fp32"], world, port, env)),
            ("clipforge train, precision=auto",
             lambda port: clipforge_rate(tmp, cfg, ["precision=auto"], world, port, env))]
    rates: dict[str, list[float]] = {label: [] for label, _ in rows}
    port = 29600
    for rep in range(repeats):
        for label, run in rows:
            port += 1
            rates[label].append(run(port))
            print(json.dumps({"row": label, "repeat": rep, "samples_per_s": round(rates[label][-1], 1)}), flush=True)
    base, bf16 = (statistics.median(rates[label]) for label, _ in rows[:2])
    print(f"\nmachine: {machine()}; {world} gloo processes of 1 thread; the last epoch's samples/s\n")
    print(markdown_table(["loop", "samples/s (median)", "runs", "vs plain fp32", "vs plain bf16"],
                         [[label, f"{statistics.median(r):.1f}", " / ".join(f"{x:.1f}" for x in r),
                           f"{statistics.median(r) / base:.2f}x", f"{statistics.median(r) / bf16:.2f}x"]
                          for label, r in rates.items()]))


if __name__ == "__main__":
    main()
