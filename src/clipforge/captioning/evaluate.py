"""``clipforge eval captioning``: caption a captioned dataset and score the captions.

COCO's metrics against the dataset's references, CLIP-score and RefCLIP-score with a separate judge
CLIP (never the captioner itself), and on the synthetic scenes the attributes read back from
captions of one-object images, on seen and on held-out (colour, shape) combinations.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from clipforge.captioning.caption import caption_images
from clipforge.data.datasets import load_retrieval, synthetic_root
from clipforge.errors import ConfigError
from clipforge.evaluation.captioning import attribute_accuracy, caption_metrics, clip_scores
from clipforge.models.generation import GenerationConfig


def evaluate_captioner(model: Any, dataset: str, judge: Any = None, config: GenerationConfig | None = None,
                       limit: int | None = None, batch_size: int = 16, attribute_images: int = 200,
                       progress: bool = False) -> dict[str, Any]:
    """``{"metrics", "settings", "examples"}`` for ``model`` on ``dataset`` (see the module docstring).

    ``limit``: caption at most this many images (in file order); ``attribute_images``: per synthetic
    split. ``judge``: a CLIP for CLIP-score; refused if it is the captioner or the CLIP the captioner
    reads (its ``clip``).
    """
    from clipforge.evaluation.cache import model_fingerprint

    if judge is not None:
        # Neither the captioner nor the CLIP it reads or is steered by (a prefix or iterative captioner's).
        guides = [m for m in (model, getattr(model, "clip", None)) if m is not None]
        if any(judge is g or model_fingerprint(judge) == model_fingerprint(g) for g in guides):
            raise ConfigError("the judge CLIP must not be the captioner nor the CLIP it reads: a captioner is never "
                              "scored by the model that guided it")
    ds = load_retrieval(dataset)
    refs: dict[str, list[str]] = {}
    for caption, i in zip(ds.captions, ds.text_to_image):
        refs.setdefault(ds.images[i], []).append(caption)
    images = ds.images[:limit] if limit else ds.images
    results, skipped = caption_images(model, images, config, batch_size, progress=progress)
    candidates = {r["image"]: r["caption"] for r in results}
    metrics: dict[str, Any] = caption_metrics(candidates, refs)
    if judge is not None:
        metrics.update(_judge(judge, results, refs))
    scenes = _scenes_root(dataset)
    if scenes is not None:
        metrics.update(_scene_attributes(model, config, attribute_images, batch_size, scenes))
    settings = {"generation": (config or GenerationConfig()).__dict__, "n_skipped": len(skipped),
                "judge": getattr(judge, "source", None) if judge is not None else None}
    examples = [{"image": r["image"], "caption": r["caption"], "references": refs.get(r["image"], [])}
                for r in results[:10]]
    return {"metrics": metrics, "settings": settings, "examples": examples}


@torch.no_grad()
def _judge(judge: Any, results: list[dict], refs: dict[str, list[str]]) -> dict[str, float]:
    from clipforge.evaluation.embed import embed_images, embed_texts

    paths = [r["image"] for r in results]
    feats, idx, _ = embed_images(judge, paths)
    kept = [results[i] for i in idx.tolist()]
    captions = embed_texts(judge, [r["caption"] for r in kept])
    references = [embed_texts(judge, refs[r["image"]]) for r in kept]
    return clip_scores(feats, captions, references)


def _scenes_root(dataset: str) -> Path | None:
    """The synthetic-scenes folder ``dataset`` belongs to (its meta.json says so), if any."""
    if dataset == "synthetic":
        return synthetic_root()
    meta = Path(dataset).parent / "meta.json"
    if meta.is_file() and json.loads(meta.read_text()).get("dataset") == "clipforge-synthetic-scenes":
        return meta.parent
    return None


def _scene_attributes(model: Any, config: GenerationConfig | None, per_split: int, batch_size: int,
                      root: Path) -> dict:
    from clipforge.data.synthetic import SynthConfig, scene_objects

    synth = SynthConfig(**json.loads((root / "meta.json").read_text())["config"])
    out: dict[str, Any] = {}
    for split, name in (("zeroshot_seen", "seen"), ("zeroshot_heldout", "heldout")):
        truths = scene_objects(split, synth)
        # Every k-th image, so each (colour, shape) combination is represented.
        step = max(1, len(truths) // per_split)
        picks = list(range(0, len(truths), step))[:per_split]
        paths = [str(root / "images" / split / f"{i:06d}.png") for i in picks]
        results, _ = caption_images(model, paths, config, batch_size)
        by_path = {r["image"]: r["caption"] for r in results}
        keep = [(by_path[p], truths[i][0]) for p, i in zip(paths, picks) if p in by_path]
        acc = attribute_accuracy([c for c, _ in keep], [t for _, t in keep])
        out.update({f"{name}/{k}": v for k, v in acc.items()})
        out[f"{name}/n_images"] = len(keep)
    return out

