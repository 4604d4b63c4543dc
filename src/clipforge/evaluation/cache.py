"""Image features cached on disk, keyed by model (a hash of its weights), data and preprocessing."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import torch
from safetensors.torch import load_file, save_file

from clipforge.data.datasets import cache_dir
from clipforge.data.pairs import Skipped
from clipforge.models.clip import CLIP


def model_fingerprint(model: CLIP) -> str:
    """sha1 of the config and every weight, computed once per model object."""
    cached = getattr(model, "_clipforge_fingerprint", None)
    if cached:
        return cached
    cfg = model.config
    # to_json when the config has it (the fingerprints already recorded in indexes and caches used it).
    h = hashlib.sha1((cfg.to_json() if hasattr(cfg, "to_json") else json.dumps(cfg.to_dict(), indent=2)).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    model._clipforge_fingerprint = h.hexdigest()[:20]  # type: ignore[attr-defined]
    return model._clipforge_fingerprint  # type: ignore[attr-defined]


def image_features(model: CLIP, images: Sequence[str], batch_size: int = 128, workers: int = 0,
                   progress: bool = True, use_cache: bool = True,
                   label: str = "embed") -> tuple[torch.Tensor, torch.Tensor, list[Skipped]]:
    """Normalised features of the readable images, their indices and the skipped images (cached).

    Under ``torchrun`` the ranks share the work (:func:`~clipforge.evaluation.embed.embed_images`)
    and rank 0 writes the cache.
    """
    from clipforge.engine.distributed import current_dist
    from clipforge.evaluation.embed import embed_images
    from clipforge.io import atomic_file, atomic_write_text

    h = hashlib.sha1()
    h.update(model_fingerprint(model).encode())
    h.update(json.dumps(model.preprocess.to_dict(), sort_keys=True).encode())
    paths = getattr(model, "inference_paths", None)  # clipforge.inference: bf16 or int8 features are others
    if paths and any(label != "torch-fp32" for label in paths.values()):
        h.update(json.dumps(paths, sort_keys=True).encode())
    for p in images:
        h.update(p.encode())
        h.update(b"\0")
    path = cache_dir() / "features" / f"{h.hexdigest()[:24]}.safetensors"
    if use_cache and path.is_file():
        d = load_file(str(path))
        meta = json.loads(path.with_suffix(".json").read_text())
        return d["features"], d["indices"], [Skipped(**s) for s in meta["skipped"]]
    info = current_dist()
    feats, idx, skipped = embed_images(model, images, batch_size, workers, progress=progress, label=label, info=info)
    if use_cache and info.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The .json first: a reader finds the .safetensors only once both are whole.
        atomic_write_text(json.dumps({"skipped": [s.__dict__ for s in skipped]}), path.with_suffix(".json"))
        with atomic_file(path) as tmp:
            save_file({"features": feats.contiguous(), "indices": idx.contiguous()}, str(tmp))
    return feats, idx, skipped
