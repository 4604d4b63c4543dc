"""lightly's SimCLR on clipforge's SSL encoder, for the side-by-side in ``bench/ssl_pretrain.py``.

lightly needs torchvision, which does not import beside the project's CPU torch, so this runs from
a separate environment (see docs/benchmarks.md, "Self-supervised encoders"):

    python3 -m venv /tmp/lightlyenv
    /tmp/lightlyenv/bin/pip install torch==2.14.1 torchvision==0.29.1 lightly==1.6.0 scikit-learn pillow \
        safetensors kornia pyyaml webdataset rich ftfy regex tokenizers matplotlib threadpoolctl
    /tmp/lightlyenv/bin/python bench/ssl_lightly.py --out /tmp/lightly-runs --datasets digits --seeds 3
    .venv/bin/python bench/ssl_pretrain.py --lightly /tmp/lightly-runs ...

What is lightly's: SimCLRTransform (input_size=32, no blur, as its CIFAR-10 examples), the
SimCLRProjectionHead, NTXentLoss, and either recipe below. What is shared: the encoder (clipforge's
small-stem ResNet, seeded the same way), the 32 px images (decoded by clipforge), the time budget
(the schedule is sized from the measured step time, as clipforge's ``minutes=`` does), and the
evaluation (done by bench/ssl_pretrain.py). Each run leaves ``DATASET-LABEL-SEED/encoder.safetensors``
and ``meta.json``.

Recipes:
* ``benchmark``: lightly's ImageNet SimCLR benchmark: LARS at 0.075 sqrt(batch), momentum 0.9,
  weight decay 1e-6 (none on biases and norms), temperature 0.1, cosine with warm-up (a tenth).
* ``example``: lightly's examples: SGD lr 0.06, momentum 0.9, weight decay 5e-4, temperature 0.5, cosine.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def images_32(source: str) -> list:
    """The dataset's training images as 32 px PIL images, decoded and cropped by clipforge."""
    from PIL import Image
    from torch.utils.data import DataLoader

    from clipforge.data.images import ImageDataset, Uint8Crop, collate_images
    from clipforge.ssl.data import unlabelled_images

    out = []
    loader = DataLoader(ImageDataset(unlabelled_images(source), Uint8Crop(32)), batch_size=512,
                        collate_fn=collate_images)
    for batch in loader:
        out += [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in batch.images]
    return out


def run(ds: str, images: list, recipe: str, seed: int, minutes: float, batch_size: int, fast: bool,
        out: Path) -> None:
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.models.utils import get_weight_decay_parameters
    from lightly.transforms import SimCLRTransform
    from lightly.utils.lars import LARS
    from lightly.utils.scheduler import CosineWarmupScheduler
    from safetensors.torch import save_file
    from torch import nn
    from torch.utils.data import DataLoader

    from clipforge.images.preprocess import OPENAI_MEAN, OPENAI_STD
    from clipforge.models.towers import build_image_tower
    from clipforge.ssl.config import SSLConfig
    from clipforge.ssl.trainer import encoder_config

    torch.manual_seed(seed)
    encoder = build_image_tower(encoder_config(SSLConfig.from_dict({})))  # the same draw as clipforge's seed
    head = SimCLRProjectionHead(128, 512, 128)
    model = nn.Sequential(encoder, head)
    if fast:
        model = model.to(memory_format=torch.channels_last)
    transform = SimCLRTransform(input_size=32, gaussian_blur=0.0,
                                normalize={"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD)})

    class Views(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, i: int):  # noqa: ANN204
            return transform(images[i])

    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(Views(), batch_size=batch_size, shuffle=True, drop_last=True, generator=g)
    if recipe == "benchmark":
        criterion = NTXentLoss(temperature=0.1)
        params, no_wd = get_weight_decay_parameters([encoder, head])
        optimizer = LARS([{"params": params}, {"params": no_wd, "weight_decay": 0.0}],
                         lr=0.075 * math.sqrt(batch_size), momentum=0.9, weight_decay=1e-6)
    else:
        criterion = NTXentLoss(temperature=0.5)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9, weight_decay=5e-4)

    def step(views) -> None:  # noqa: ANN001
        x0, x1 = (v.contiguous(memory_format=torch.channels_last) if fast else v for v in views)
        with torch.autocast("cpu", torch.bfloat16, enabled=fast):
            loss = criterion(model(x0), model(x1))
        optimizer.zero_grad()
        loss.float().backward()
        optimizer.step()

    # The time budget, as clipforge's minutes= does: after every step the rate since the first step
    # (its one-off costs left out) sizes the cosine schedule to the time that is left.
    budget, start, steps, after_first = minutes * 60, time.time(), 0, 0.0
    scheduler = CosineWarmupScheduler(optimizer, warmup_epochs=1, max_epochs=10)
    while time.time() - start < budget:
        for views in loader:
            step(views)
            steps += 1
            now = time.time()
            after_first = after_first or now
            rate = (now - after_first) / (steps - 1) if steps > 2 else (now - start) / steps
            total = max(steps + 1, steps + int((budget - (now - start)) / rate))
            scheduler.max_epochs, scheduler.warmup_epochs = total, max(1, total // 10)
            scheduler.step()
            if now - start >= budget:
                break
    seconds = time.time() - start
    folder = out / f"{ds}-lightly-{recipe}{'-fast' if fast else ''}-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(folder / "encoder.safetensors"))
    meta = {"label": f"lightly simclr ({recipe}{', bf16 channels-last' if fast else ''})", "seed": seed,
            "steps": steps, "seconds": seconds, "recipe": {"recipe": recipe, "batch_size": batch_size,
                                                           "fast": fast}}
    (folder / "meta.json").write_text(json.dumps(meta))
    print(json.dumps(meta), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--datasets", nargs="+", default=["digits"])
    parser.add_argument("--recipes", nargs="+", default=["benchmark"], choices=["benchmark", "example"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fast", action="store_true", help="bf16 autocast and channels-last, as clipforge's recipe")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for ds in args.datasets:
        images = images_32(ds)
        for recipe in args.recipes:
            for seed in range(args.seeds):
                run(ds, images, recipe, seed, args.minutes, args.batch_size, args.fast, args.out)


if __name__ == "__main__":
    main()
