"""Image features cached on disk, keyed by model (a hash of its weights), data and preprocessing."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import torch
from safetensors.torch import load_file, save_file

from clipforge.data.pairs import Skipped
from clipforge.evaluation.datasets import cache_dir
from clipforge.models.clip import CLIP


def model_fingerprint(model: CLIP) -> str:
    """sha1 of the config and every weight, computed once per model object."""
    cached = getattr(model, "_clipforge_fingerprint", None)
    if cached:
        return cached
    h = hashlib.sha1(model.config.to_json().encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    model._clipforge_fingerprint = h.hexdigest()[:20]  # type: ignore[attr-defined]
    return model._clipforge_fingerprint  # type: ignore[attr-defined]


def image_features(model: CLIP, images: Sequence[str], batch_size: int = 128, workers: int = 0,
                   progress: bool = True, use_cache: bool = True,
                   label: str = "embed") -> tuple[torch.Tensor, torch.Tensor, list[Skipped]]:
    """Normalised features of the readable images, their indices and the skipped images (cached)."""
    from clipforge.evaluation.embed import embed_images

    h = hashlib.sha1()
    h.update(model_fingerprint(model).encode())
    h.update(json.dumps(model.preprocess.to_dict(), sort_keys=True).encode())
    for p in images:
        h.update(p.encode())
        h.update(b"\0")
    path = cache_dir() / "features" / f"{h.hexdigest()[:24]}.safetensors"
    if use_cache and path.is_file():
        d = load_file(str(path))
        meta = json.loads(path.with_suffix(".json").read_text())
        return d["features"], d["indices"], [Skipped(**s) for s in meta["skipped"]]
    feats, idx, skipped = embed_images(model, images, batch_size, workers, progress=progress, label=label)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"features": feats.contiguous(), "indices": idx.contiguous()}, str(path))
        path.with_suffix(".json").write_text(json.dumps({"skipped": [s.__dict__ for s in skipped]}))
    return feats, idx, skipped
