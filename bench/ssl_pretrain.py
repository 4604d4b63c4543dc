"""Self-supervised encoders after a fixed CPU budget: kNN and linear-probe accuracy.

For each dataset (the synthetic scenes, labelled by shape; scikit-learn's handwritten digits), a
small-stem modified ResNet (width 16, one block per stage, 32 px, 128-d output) is pretrained with
SimCLR, BYOL and SimSiam for the same number of minutes each, with the papers' default heads and
augmentations, then evaluated with weighted kNN (k = 200, T = 0.1) and the CLIP-paper linear probe.
Baselines in the same run: the same encoder randomly initialised, and raw pixels.

    .venv/bin/python bench/ssl_pretrain.py                     # 2 minutes per method and dataset (~15 min)
    .venv/bin/python bench/ssl_pretrain.py --minutes 1 --datasets digits
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    from clipforge.data.datasets import pixel_features
    from clipforge.evaluation.linear_probe import linear_probe
    from clipforge.models.towers import build_image_tower
    from clipforge.ssl.config import SSLConfig
    from clipforge.ssl.data import labelled_sets
    from clipforge.ssl.knn import knn_accuracy
    from clipforge.ssl.trainer import encoder_config, evaluate_encoder, train_ssl
    from common import machine, markdown_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=2.0, help="training budget per method and dataset")
    parser.add_argument("--datasets", nargs="+", default=["synthetic", "digits"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}; {args.threads} threads; budget {args.minutes} min per method\n")
    rows = []
    work = Path(tempfile.mkdtemp(prefix="clipforge-ssl-"))
    for ds in args.datasets:
        train, test = labelled_sets(ds)
        ytr, yte = torch.tensor(train.labels), torch.tensor(test.labels)
        xtr, _ = pixel_features(train.images)
        xte, _ = pixel_features(test.images)
        rows.append([ds, "raw pixels (32x32x3)", "-", "-", f"{knn_accuracy(xtr, ytr, xte, yte):.1%}",
                     f"{linear_probe(xtr, ytr, xte, yte)['lp_acc1']:.1%}"])
        base = {"data": ds, "image_size": 32, "embed_dim": 128, "epochs": 1000, "batch_size": 256,
                "minutes": args.minutes, "eval_every_epochs": 0, "tensorboard": False, "threads": args.threads}
        torch.manual_seed(0)
        random_encoder = build_image_tower(encoder_config(SSLConfig.from_dict({**base, "method": "simclr"})))
        m = evaluate_encoder(random_encoder, ds, 32)
        rows.append([ds, "random-init encoder", "-", "-", f"{m['knn_acc1']:.1%}", f"{m['lp_acc1']:.1%}"])
        for method in ("simclr", "byol", "simsiam"):
            cfg = SSLConfig.from_dict({**base, "method": method, "out_dir": str(work / f"{ds}-{method}")})
            _, state = train_ssl(cfg, progress=False)
            ev = state.evals[-1]
            rows.append([ds, method, state.step, f"{state.train_seconds / 60:.1f}", f"{ev['knn_acc1']:.1%}",
                         f"{ev['lp_acc1']:.1%}"])
            print(" | ".join(str(c) for c in rows[-1]), flush=True)
    print()
    print(markdown_table(["dataset", "features", "steps", "train min", "kNN acc1", "linear probe acc1"], rows))


if __name__ == "__main__":
    main()
