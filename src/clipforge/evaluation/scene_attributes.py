"""Reading a synthetic scene's attributes back from its pixels: part of the judge of generators.

A small CNN with four heads (colour, shape, size, position) is trained on *real* single-object
scenes of the training split, at the generator's resolution, with the ground truth
:func:`clipforge.data.synthetic.scene_objects` gives. Held-out (colour, shape) combinations never
appear in training, so a network that reads shape from the same features as colour learns "a pink
object is not a triangle". Shape, size and position are therefore read by a second trunk that
cannot see hue: it is trained on images whose RGB channels are permuted at random, and at
inference its logits are averaged over all six permutations, which makes it exactly invariant to
them. Its accuracy on the real held-out zero-shot images is reported beside the generators' as the
ceiling. It never sees a generated image in training, and no generator is trained with it.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.data.synthetic import COLOURS, POSITIONS, SHAPES, SIZES, SceneObject, SynthConfig, scene_objects

log = logging.getLogger(__name__)

HEADS = {"colour": list(COLOURS), "shape": list(SHAPES), "size": list(SIZES), "position": list(POSITIONS)}


PERMUTATIONS = list(itertools.permutations(range(3)))
VERSION = 2  # in cache file names: a classifier saved by another version is not read


def _trunk(width: int) -> nn.Sequential:
    """Four conv blocks (GroupNorm, SiLU, stride 2), pooled to a 3x3 grid (position needs where)."""
    layers: list[nn.Module] = []
    cin = 3
    for cout in (width, 2 * width, 2 * width, 4 * width):
        layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(3), nn.Flatten())


class AttributeClassifier(nn.Module):
    """A colour trunk and a hue-blind form trunk (shape, size, position); see the module docstring."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.colour_net, self.form_net = _trunk(width), _trunk(width)
        self.heads = nn.ModuleDict({k: nn.Linear(4 * width * 9, len(v)) for k, v in HEADS.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits (log-probabilities for the form heads at inference) per attribute, images in [-1, 1]."""
        out = {"colour": self.heads["colour"](self.colour_net(images))}
        form = ("shape", "size", "position")
        if self.training:  # each image with its channels in a random order
            perm = torch.stack([torch.tensor(PERMUTATIONS[int(i)]) for i in torch.randint(6, (len(images),))])
            shuffled = torch.gather(images, 1, perm[:, :, None, None].expand_as(images).to(images.device))
            h = self.form_net(shuffled)
            out.update({k: self.heads[k](h) for k in form})
            return out
        logps = {k: [] for k in form}
        for p in PERMUTATIONS:
            h = self.form_net(images[:, list(p)])
            for k in form:
                logps[k].append(torch.log_softmax(self.heads[k](h), dim=-1))
        out.update({k: torch.stack(v).mean(0) for k, v in logps.items()})
        return out


def _labels(objs: list[SceneObject]) -> dict[str, int]:
    o = objs[0]
    return {"colour": HEADS["colour"].index(o.colour), "shape": HEADS["shape"].index(o.shape),
            "size": HEADS["size"].index(o.size), "position": HEADS["position"].index(o.position)}


def single_object_images(data_dir: Path, split: str, size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The split's single-object scenes as [-1, 1] images at ``size`` and their attribute labels."""
    from torch.utils.data import DataLoader

    from clipforge.data.images import ImageDataset, Uint8Crop, collate_images

    meta = json.loads((data_dir / "meta.json").read_text())
    objects = scene_objects(split, SynthConfig(**meta["config"]))
    rows = [i for i, objs in enumerate(objects) if len(objs) == 1]
    paths = [str(data_dir / "images" / split / f"{i:06d}.png") for i in rows]
    chunks, keep = [], []
    for batch in DataLoader(ImageDataset(paths, Uint8Crop(size)), batch_size=256, collate_fn=collate_images):
        if len(batch.indices):
            chunks.append(batch.images)
            keep += batch.indices.tolist()
    images = torch.cat(chunks).float() / 127.5 - 1
    labels = [_labels(objects[rows[i]]) for i in keep]
    return images, {k: torch.tensor([lab[k] for lab in labels]) for k in HEADS}


def train_attribute_classifier(data_dir: Path, size: int, epochs: int = 8, seed: int = 0,
                               cache: Path | None = None) -> AttributeClassifier:
    """Train (or load from ``cache``) the classifier on the training split's single-object scenes."""
    from safetensors.torch import load_file, save_file

    model = AttributeClassifier()
    if cache is not None and cache.is_file():
        try:
            model.load_state_dict(load_file(str(cache)))
            return model.eval()
        except (RuntimeError, OSError) as e:  # another version's or a damaged file: train again
            log.warning(f"{cache}: not this classifier's weights ({str(e).splitlines()[0][:80]}); training it again")
    images, labels = single_object_images(data_dir, "train", size)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * (len(images) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=max(1, steps))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=g)
        for i in range(0, len(order) - 63, 64):
            idx = order[i : i + 64]
            out = model(images[idx])
            loss = sum(F.cross_entropy(out[k], labels[k][idx]) for k in HEADS)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        save_file(model.state_dict(), str(tmp))
        tmp.replace(cache)
    return model


@torch.no_grad()
def read_attributes(model: AttributeClassifier, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The predicted index of each attribute for images in [-1, 1]."""
    out = [model(chunk) for chunk in images.split(256)]
    return {k: torch.cat([o[k] for o in out]).argmax(-1) for k in HEADS}


def attribute_accuracy(predicted: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, float]:
    """Accuracy of each attribute, and of colour and shape together."""
    out = {k: float((predicted[k] == target[k]).float().mean()) for k in HEADS if k in target}
    if "colour" in target and "shape" in target:
        both = (predicted["colour"] == target["colour"]) & (predicted["shape"] == target["shape"])
        out["colour_and_shape"] = float(both.float().mean())
    return out
