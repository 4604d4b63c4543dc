"""Training throughput under torchrun with gloo ranks on the CPU: the whole trainer, end to end.

Trains a small CLIP (the 64 px ViT of bench/train.py's size class) on 1,536 synthetic pairs, batch
128, for 2 epochs, with ``--world`` processes (1 torch thread each), and reports the samples/s the
trainer logs (its rate over each epoch, last logged value, median over ``--repeats`` runs).
``--src`` runs another checkout's code (e.g. the commit before the engine, for a before/after
figure in the same sitting).

    .venv/bin/python bench/gloo_train.py --world 2
    .venv/bin/python bench/gloo_train.py --options precision=auto   # clipforge train options on top
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


def main() -> None:
    from clipforge.data.synthetic import SynthConfig, write_dataset
    from common import machine

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--src", default=None, help="a checkout's src/ folder to import clipforge from")
    parser.add_argument("--options", nargs="*", default=[], metavar="KEY=VALUE", help="clipforge train options")
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
    rates = []
    for r in range(args.repeats):
        run = tmp / f"run{r}"
        (tmp / "cfg.json").write_text(json.dumps({**cfg, "out_dir": str(run)}))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.world), "--master-port",
               str(29600 + r), "-m", "clipforge.cli.main", "train", "--config", str(tmp / "cfg.json"), "--no-progress",
               *args.options]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
        if proc.returncode:
            sys.exit(proc.stderr[-2000:])
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        rates.append(lines[-1]["samples_per_s"])
    print(f"machine: {machine()}; code: {args.src or 'this checkout'}; {args.world} gloo process(es); "
          f"options: {' '.join(args.options) or 'none'}")
    print(f"samples/s per run: {', '.join(f'{x:.1f}' for x in rates)}; median {statistics.median(rates):.1f}")


if __name__ == "__main__":
    main()
