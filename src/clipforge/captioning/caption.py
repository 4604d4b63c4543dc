"""Caption image files with any model that has ``generate(images, config) -> {"ids", "image_features"}``.

Unreadable images are skipped with a warning and listed; the image embeddings the captioner computed
come back with the captions, so a caller does not encode the images twice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from clipforge.data.images import ImageDataset, collate_images
from clipforge.data.pairs import IMAGE_SUFFIXES, Skipped
from clipforge.errors import ConfigError, DataError
from clipforge.models.generation import GenerationConfig
from clipforge.tokenizer.ids import ids_to_text

log = logging.getLogger(__name__)


def image_files(sources: Sequence[str]) -> list[str]:
    """Files as given, folders expanded to their images (sorted, recursive)."""
    files: list[str] = []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            found = sorted(str(q) for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"{p}: no images in this folder")
            files += found
        else:
            files.append(str(p))
    return files


@torch.no_grad()
def caption_images(model: Any, images: Sequence[str], config: GenerationConfig | None = None,
                   batch_size: int = 16, progress: bool = False) -> tuple[list[dict[str, Any]], list[Skipped]]:
    """``[{"image", "caption", "image_features"}]`` for the readable images, and the skipped ones."""
    from clipforge.utils.progress import progress_bar

    if not hasattr(model, "generate"):
        raise ConfigError(f"a {type(model).__name__} does not caption: give a CoCa (clipforge train "
                          "model.name=coca-tiny ...) or a captioner")
    if model.tokenizer is None:
        raise ConfigError("the captioner has no tokenizer to turn its ids into words")
    device = next(model.parameters()).device
    model.eval()
    cfg = model.config
    files = image_files(images)
    results, skipped = [], []
    loader = DataLoader(ImageDataset(files, model.preprocess), batch_size=batch_size, collate_fn=collate_images)
    with progress_bar("caption", total=len(loader), enabled=progress) as bar:
        for batch in loader:
            skipped += batch.skipped
            if len(batch.indices):
                out = model.generate(batch.images.to(device), config)
                for i, ids, feats in zip(batch.indices.tolist(), out["ids"].tolist(), out["image_features"].cpu()):
                    results.append({"image": files[i], "caption": ids_to_text(model.tokenizer, ids, cfg.start_id,
                                                                               cfg.end_id, cfg.pad_id),
                                    "image_features": feats})
            bar.advance()
    for s in skipped:
        log.warning(f"skipping {s.source}: {s.detail or s.reason}")
    return results, skipped
