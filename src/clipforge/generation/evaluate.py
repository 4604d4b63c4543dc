"""``clipforge eval generation``: a generator judged on the synthetic scenes by models it never saw.

Prompts: one per (colour, shape) combination, "a {size} {colour} {shape} {where}" with a size and
position fixed per combination, split into combinations seen in training and held-out ones. For
each split: CLIP-score and R-precision (against 99 real validation captions) under a *judge* CLIP,
and colour / shape / size / position read back by a classifier trained on real scenes
(:mod:`clipforge.evaluation.scene_attributes`); over all samples, the Frechet distance between the
judge's features of generated and real validation images. The same measures on real images are
the ceiling. The judge must be neither the CLIP the generator is conditioned on nor the one that
re-ranked its samples. Writes ``metrics.json`` and ``report.html`` (a grid of samples per prompt).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from clipforge.data.synthetic import POSITION_PHRASES
from clipforge.errors import ConfigError
from clipforge.evaluation.embed import embed_pixels, embed_texts
from clipforge.evaluation.generation import clip_score, frechet_distance, r_precision
from clipforge.evaluation.scene_attributes import (
    HEADS,
    attribute_accuracy,
    read_attributes,
    single_object_images,
    train_attribute_classifier,
)
from clipforge.evaluation.scene_attributes import (
    VERSION as CLASSIFIER_VERSION,
)
from clipforge.generation.prompts import scene_prompts
from clipforge.generation.sample import SampleOptions, sample_prompts

log = logging.getLogger(__name__)


def check_judge(model: Any, judge: Any, rerank_clip: Any = None) -> None:
    """Refuse a judge that guided the generator: its conditioning CLIP or its re-ranker."""
    from clipforge.evaluation.cache import model_fingerprint

    fp = model_fingerprint(judge)
    if fp == getattr(model.config, "clip_fingerprint", None):
        raise ConfigError("the judge is the CLIP this generator is conditioned on; judge with a separate CLIP "
                          "(another seed and image tower, trained on the same data)")
    if rerank_clip is not None and fp == model_fingerprint(rerank_clip):
        raise ConfigError("the judge is the CLIP that re-ranked the samples; judge with another CLIP")


def evaluate_generator(model: Any, data_dir: str | Path, judge: Any, options: SampleOptions | None = None,
                       out_dir: str | Path | None = None, rerank_clip: Any = None, progress: bool = False,
                       classifier_cache: str | Path | None = None, word_edits: bool = False) -> dict[str, Any]:
    """The judge's metrics on seen and held-out prompts (and the real-image ceiling); writes
    ``metrics.json`` and ``report.html`` to ``out_dir`` when given. ``word_edits``: also ControlGAN's
    one-word edits (:mod:`clipforge.generation.word_edit`; generators with a latent)."""
    from clipforge.data.pairs import read_pairs

    data_dir = Path(data_dir)
    if not (data_dir / "meta.json").is_file():
        raise ConfigError(f"{data_dir}: not a synthetic-scenes folder (no meta.json); make one with "
                          "`clipforge data synth`")
    check_judge(model, judge, rerank_clip)
    options = options or SampleOptions()
    size = model.image_size if hasattr(model, "image_size") else model.config.image_size
    prompts = scene_prompts()
    texts = [p["prompt"] for p in prompts]
    start = time.perf_counter()
    out = sample_prompts(model, texts, options, rerank_clip=rerank_clip, progress=progress)
    sampling_seconds = time.perf_counter() - start
    images = out["images"]  # [P, n, 3, H, W]
    n = images.shape[1]
    flat = images.flatten(0, 1)
    val_pairs, _ = read_pairs(str(data_dir / "val.csv"))
    val_captions = sorted({p.caption for p in val_pairs} - set(texts))
    all_texts = embed_texts(judge, texts + val_captions)
    gen_feats = embed_pixels(judge, flat)
    prompt_idx = torch.arange(len(texts)).repeat_interleave(n)
    cache = Path(classifier_cache) if classifier_cache else \
        data_dir / f".attribute_classifier_v{CLASSIFIER_VERSION}_{size}px.safetensors"
    classifier = train_attribute_classifier(data_dir, size, cache=cache)
    predicted = read_attributes(classifier, flat.float() / 127.5 - 1)
    targets = {k: torch.tensor([p["target"][k] for p in prompts]).repeat_interleave(n) for k in HEADS}
    metrics: dict[str, Any] = {}
    for split in ("seen", "heldout"):
        rows = torch.tensor([p["split"] == split for p in prompts]).repeat_interleave(n)
        m = {"clip_score": clip_score(gen_feats[rows], all_texts[prompt_idx[rows]]),
             "r_precision": r_precision(gen_feats[rows], prompt_idx[rows], all_texts),
             "n_images": int(rows.sum())}
        m.update({f"{k}_acc": v for k, v in attribute_accuracy({k: v[rows] for k, v in predicted.items()},
                                                               {k: v[rows] for k, v in targets.items()}).items()})
        metrics[split] = m
    # The guiding CLIP's own score of the same images (it conditioned, re-ranked or searched): its gain
    # over plain sampling set against the judge's is how much of the steering a separate model confirms.
    guide = rerank_clip if rerank_clip is not None else model.clip
    if guide is not None:
        metrics["guide_clip_score"] = clip_score(embed_pixels(guide, flat), embed_texts(guide, texts)[prompt_idx])
    if word_edits:
        from clipforge.generation.word_edit import word_edits as measure_edits

        if not hasattr(model, "render"):
            raise ConfigError(f"word edits need a generator with a latent (ddpm, GANs), not {model.arch}")
        metrics["word_edits"] = measure_edits(model, classifier, n=n, seed=options.seed, steps=options.steps,
                                              guidance=options.guidance)
    real = _real_val_features(judge, val_pairs, size)
    metrics["frechet_distance"] = frechet_distance(gen_feats, real)
    metrics["ceiling"] = real_ceiling(judge, classifier, data_dir, size)
    metrics["options"] = {k: getattr(options, k) for k in options.__dataclass_fields__}
    # Delivered images per second: re-ranked draws and search renders are part of each image's cost.
    metrics["images_per_s"] = images.shape[0] * images.shape[1] / sampling_seconds
    if out_dir is not None:
        _write(Path(out_dir), metrics, prompts, images, out["scores"])
    return metrics


def _real_val_features(judge: Any, pairs: list, size: int) -> torch.Tensor:
    """The judge's features of the validation images, seen at the generator's resolution."""
    from clipforge.generation.train import read_training_images

    images, _, _ = read_training_images(sorted({p.image for p in pairs}), size, progress=False)
    return embed_pixels(judge, images)


def real_ceiling(judge: Any, classifier: Any, data_dir: Path, size: int) -> dict[str, Any]:
    """The same measures on real single-object zero-shot images (at the generator's resolution),
    with prompts built from their ground truth."""
    out = {}
    for split in ("seen", "heldout"):
        images, labels = single_object_images(data_dir, f"zeroshot_{split}", size)
        texts = [f"a {HEADS['size'][s]} {HEADS['colour'][c]} {HEADS['shape'][h]} "
                 f"{POSITION_PHRASES[HEADS['position'][p]]}"
                 for s, c, h, p in zip(*(labels[k].tolist() for k in ("size", "colour", "shape", "position")))]
        uniq = sorted(set(texts))
        feats = embed_pixels(judge, ((images + 1) * 127.5).round().to(torch.uint8))
        text_feats = embed_texts(judge, uniq)
        idx = torch.tensor([uniq.index(t) for t in texts])
        m = {"clip_score": clip_score(feats, text_feats[idx]), "n_images": len(images)}
        m.update({f"{k}_acc": v for k, v in attribute_accuracy(read_attributes(classifier, images), labels).items()})
        out[split] = m
    return out


def _write(out: Path, metrics: dict[str, Any], prompts: list[dict], images: torch.Tensor,
           scores: torch.Tensor | None) -> None:
    import html

    from clipforge.images.grid import image_grid
    from clipforge.io import atomic_write_text
    from clipforge.report.html import page, pil_tag, table

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(metrics, indent=2), out / "metrics.json")
    keys = ["clip_score", "r_precision", "colour_acc", "shape_acc", "size_acc", "position_acc",
            "colour_and_shape_acc"]
    rows = [[f"generated, {s}"] + [metrics[s].get(k, "-") for k in keys] for s in ("seen", "heldout")]
    rows += [[f"real images, {s}"] + [metrics["ceiling"][s].get(k, "-") for k in keys] for s in ("seen", "heldout")]
    parts = [f"<p>Frechet distance (judge features) to the real validation images: "
             f"<b>{metrics['frechet_distance']:.3f}</b>. Options: {html.escape(json.dumps(metrics['options']))}</p>",
             table(["images", *keys], rows)]
    for split in ("heldout", "seen"):
        parts.append(f"<h2>{'Held-out' if split == 'heldout' else 'Seen'} combinations</h2><div class='grid'>")
        for i, p in enumerate(prompts):
            if p["split"] == split:
                grid = image_grid(images[i], columns=images.shape[1], scale=3)
                parts.append(f"<div style='margin:4px'>{pil_tag(grid, p['prompt'])}<br>"
                             f"<small>{html.escape(p['prompt'])}</small></div>")
        parts.append("</div>")
    atomic_write_text(page("clipforge: generated images under the judge", "\n".join(parts)), out / "report.html")
