"""Batched feature extraction for evaluation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader

from clipforge.data.images import ImageDataset, collate_images
from clipforge.data.pairs import Skipped
from clipforge.engine.distributed import DistInfo
from clipforge.models.clip import CLIP


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """The model in eval mode for the block, then as it was: an embedding never depends on the batch
    (BatchNorm's batch statistics) or on dropout, and never moves BatchNorm's running statistics."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


@torch.no_grad()
def embed_texts(model: CLIP, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Normalised text features [N, D] (computed in eval mode)."""
    if model.tokenizer is None:
        from clipforge.checkpoints.load import no_tokenizer_message
        from clipforge.errors import ConfigError

        raise ConfigError(no_tokenizer_message(model))
    out = []
    with eval_mode(model):
        for i in range(0, len(texts), batch_size):
            tokens = model.tokenizer(list(texts[i : i + batch_size]))
            out.append(model.encode_text(tokens.to(_device(model)), normalize=True).float().cpu())
    return torch.cat(out) if out else torch.empty(0, model.config.embed_dim)


@torch.no_grad()
def embed_images(
    model: CLIP, paths: Sequence[str], batch_size: int = 128, workers: int = 0, progress: bool = False,
    label: str = "embed", info: DistInfo | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[Skipped]]:
    """Normalised image features of the readable images.

    Returns (features [M, D], indices [M] of the images they belong to, skipped images). Under
    ``torchrun`` (``info`` of several ranks) each rank encodes every world_size-th batch and the
    features are gathered, so every rank returns what one process would.
    """
    from clipforge.utils.progress import progress_bar

    info = info or DistInfo()
    loader = DataLoader(ImageDataset(paths, model.preprocess), batch_size=batch_size, num_workers=workers,
                        collate_fn=collate_images,
                        sampler=_RankBatches(len(paths), batch_size, info) if info.enabled else None)
    device = _device(model)
    feats, idx, batch_skips = [], [], []
    with progress_bar(label, total=len(loader), enabled=progress and info.is_main) as bar, eval_mode(model):
        for batch in loader:
            batch_skips.append(batch.skipped)
            if len(batch.indices):
                feats.append(model.encode_image(batch.images.to(device), normalize=True).float().cpu())
                idx.append(batch.indices)
            bar.advance()
    dim = model.config.embed_dim
    feats_t = torch.cat(feats) if feats else torch.empty(0, dim)
    idx_t = torch.cat(idx) if idx else torch.empty(0, dtype=torch.long)
    if info.enabled:
        return _gather(feats_t, idx_t, batch_skips, info)
    return feats_t, idx_t, [s for b in batch_skips for s in b]


class _RankBatches(torch.utils.data.Sampler):
    """This rank's share of the indices: every world_size-th batch of ``batch_size``, in order."""

    def __init__(self, n: int, batch_size: int, info: DistInfo) -> None:
        self.order = [i for start in range(info.rank * batch_size, n, batch_size * info.world_size)
                      for i in range(start, min(start + batch_size, n))]

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def _gather(feats: torch.Tensor, idx: torch.Tensor, batch_skips: list[list[Skipped]], info: DistInfo):
    """Every rank's features and skipped images in input order (as one process finds them)."""
    import torch.distributed as dist

    from clipforge.losses.distributed import all_gather_rows, rank_sizes

    sizes = rank_sizes(len(idx))
    all_feats = torch.cat(all_gather_rows(feats, sizes))
    all_idx = torch.cat(all_gather_rows(idx, sizes))
    parts: list = [None] * info.world_size
    dist.all_gather_object(parts, batch_skips)
    # Rank r held batches r, r + W, r + 2W, ...: interleave them back.
    rounds = max(len(p) for p in parts)
    all_skipped = [s for j in range(rounds) for p in parts if j < len(p) for s in p[j]]
    order = torch.argsort(all_idx)
    return all_feats[order], all_idx[order], all_skipped


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def embed_pil(model: CLIP, images: Sequence, batch_size: int = 256) -> torch.Tensor:
    """Normalised image features [N, D] of PIL images held in memory (attacked, shifted or
    generated images), each through the model's own preprocessing, as a file would be."""
    out = []
    with eval_mode(model):
        for i in range(0, len(images), batch_size):
            x = model.preprocess.batch(list(images[i : i + batch_size])).to(_device(model))
            out.append(model.encode_image(x, normalize=True).float().cpu())
    return torch.cat(out) if out else torch.empty(0, model.config.embed_dim)


def embed_pixels(model: CLIP, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """:func:`embed_pil` of uint8 images [N, 3, H, W] (generated images)."""
    from PIL import Image

    return embed_pil(model, [Image.fromarray(im.permute(1, 2, 0).cpu().numpy()) for im in images], batch_size)
