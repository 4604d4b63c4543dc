"""Batched feature extraction for evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader

from clipforge.data.pairs import Pair, PairDataset, Skipped, collate
from clipforge.models.clip import CLIP


@torch.no_grad()
def embed_texts(model: CLIP, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Normalised text features [N, D]."""
    if model.tokenizer is None:
        from clipforge.checkpoints.load import no_tokenizer_message
        from clipforge.errors import ConfigError

        raise ConfigError(no_tokenizer_message(model))
    out = []
    for i in range(0, len(texts), batch_size):
        tokens = model.tokenizer(list(texts[i : i + batch_size]))
        out.append(model.encode_text(tokens.to(_device(model)), normalize=True).float().cpu())
    return torch.cat(out) if out else torch.empty(0, model.config.embed_dim)


@torch.no_grad()
def embed_images(
    model: CLIP, paths: Sequence[str], batch_size: int = 128, workers: int = 0, progress: bool = False,
    label: str = "embed",
) -> tuple[torch.Tensor, torch.Tensor, list[Skipped]]:
    """Normalised image features of the readable images.

    Returns (features [M, D], indices [M] of the images they belong to, skipped images).
    """
    no_tokens = lambda texts: torch.zeros(len(texts), 1, dtype=torch.long)  # noqa: E731 - images only
    ds = PairDataset([Pair(p, "-") for p in paths], model.preprocess, no_tokens)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    from clipforge.utils.progress import progress_bar

    feats, idx, skipped = [], [], []
    with progress_bar(label, total=len(loader), enabled=progress) as bar:
        for batch in loader:
            skipped += batch.skipped
            if len(batch):
                feats.append(model.encode_image(batch.images.to(_device(model)), normalize=True).float().cpu())
                idx.append(batch.indices)
            bar.advance()
    if not feats:
        return torch.empty(0, model.config.embed_dim), torch.empty(0, dtype=torch.long), skipped
    return torch.cat(feats), torch.cat(idx), skipped


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
