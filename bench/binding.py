"""Binding speech and depth to a trained CLIP (ImageBind), and what emerges, in one run.

On a ``clipforge data synth OUT --modalities speech,depth`` folder and a CLIP trained on the same
scenes (``make demo`` writes one to outputs/demo/run/model):

* speech and depth bound to the CLIP's *image* embeddings (ImageBind's setting: no text, and no
  speech-depth pairs, are ever used), into one bound model (depth added onto the speech model);
* the same encoders trained on the *text* embeddings of the captions instead: the supervised
  reference the emergent figures are held against;
* ``clipforge bind eval``'s measurements of both: emergent zero-shot (seen and held-out
  combinations), retrieval between modalities, embedding arithmetic, a nearest-caption decoder.

    .venv/bin/clipforge caption train --method capdec --clip outputs/demo/run/model --data /tmp/bsyn/train.csv \
        epochs=2 out_dir=/tmp/capdec        # a decoder that never saw an image, speech or depth map
    .venv/bin/python bench/binding.py --clip outputs/demo/run/model --data /tmp/bsyn --work /tmp/bindbench \
        --captioner /tmp/capdec/model
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", required=True)
    p.add_argument("--data", required=True, help="a clipforge data synth folder with speech and depth")
    p.add_argument("--work", default="/tmp/bindbench")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--captioner", default=None, help="a captioner trained on the CLIP's text embeddings only "
                   "(clipforge caption train --method capdec ...), re-used on speech and depth")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from clipforge.bind.config import BindTrainConfig
    from clipforge.bind.evaluate import summary_markdown
    from clipforge.bind.measure import measure, synthetic_layout
    from clipforge.bind.train import train_bind
    from clipforge.checkpoints import load

    work, data = Path(args.work), Path(args.data)
    train_csv = str(data / "train.csv")
    runs = {  # name: (modality, paired with, bind onto)
        "speech": ("speech", "image", args.clip),
        "speech+depth": ("depth", "image", str(work / "speech" / "model")),
        "speech (text-paired)": ("speech", "text", args.clip),
        "depth (text-paired)": ("depth", "text", args.clip),
    }
    minutes = {}
    for name, (modality, paired, onto) in runs.items():
        out = work / name.replace(" ", "_").replace("(", "").replace(")", "")
        if (out / "model" / "config.json").is_file():
            print(f"{name}: reusing {out}/model")
            continue
        cfg = BindTrainConfig(modality=modality, clip=onto, data=train_csv, pair_with=paired,  # type: ignore[arg-type]
                              epochs=args.epochs, out_dir=str(out), save_every_minutes=0)
        t = time.time()
        train_bind(cfg, progress=False)
        minutes[name] = (time.time() - t) / 60
        print(f"{name}: trained in {minutes[name]:.1f} min", flush=True)
    layout = synthetic_layout(data)
    layout.captioner = args.captioner
    results = {}
    for name in ("speech+depth", "speech (text-paired)", "depth (text-paired)"):
        folder = work / name.replace(" ", "_").replace("(", "").replace(")", "") / "model"
        results[name] = {"model": str(folder), **measure(load(folder), layout, progress=False)}
        print(summary_markdown(results[name]))
    results["train_minutes"] = minutes  # type: ignore[assignment]
    (work / "binding.json").write_text(json.dumps(results, indent=2))
    print(f"results in {work}/binding.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
