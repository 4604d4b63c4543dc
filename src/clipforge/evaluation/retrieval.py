"""Image-text retrieval recall@k with CLIP_benchmark's definitions, computed in blocks.

``image_retrieval_recall@k``: share of texts whose image is among the k images most similar to
the text. ``text_retrieval_recall@k``: share of images with at least one of their captions among
the k most similar texts. The similarity matrix is never held whole: queries go in blocks.

Ties are ordered by index, as a stable sort would (CLIP_benchmark takes ``torch.topk``, whose order
among equal scores is unspecified): a candidate with the same score as the positive but a lower
index ranks above it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def retrieval_metrics(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_to_image: Sequence[int] | torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    block: int = 4096,
) -> dict[str, float]:
    """Recall@k both ways, plus median ranks.

    Args:
        image_features: [I, D] normalised.
        text_features: [T, D] normalised.
        text_to_image: for each text, the index of its image.
    """
    t2i = torch.as_tensor(text_to_image, dtype=torch.long)
    n_img, n_txt = image_features.shape[0], text_features.shape[0]
    out: dict[str, float] = {}
    # text -> image: rank of the one positive image.
    ranks_t = torch.empty(n_txt, dtype=torch.long)
    for s in range(0, n_txt, block):
        sims = text_features[s : s + block] @ image_features.T
        pos_idx = t2i[s : s + block, None]
        pos = sims.gather(1, pos_idx)
        earlier = torch.arange(n_img)[None, :] < pos_idx
        ranks_t[s : s + block] = ((sims > pos) | ((sims == pos) & earlier)).sum(dim=1)
    # image -> text: the best rank among the image's captions (a stable descending sort).
    ranks_i = torch.full((n_img,), n_txt, dtype=torch.long)
    # Sorting holds scores and int64 indices for a [rows, T] block: bound it to ~2^26 elements.
    rows = max(1, min(block, 2**26 // max(1, n_txt)))
    for s in range(0, n_img, rows):
        sims = image_features[s : s + rows] @ text_features.T  # [rows, T]
        owner = t2i[None, :] == torch.arange(s, min(s + rows, n_img))[:, None]
        order = torch.sort(sims, dim=1, descending=True, stable=True).indices
        hit = owner.gather(1, order)
        has = hit.any(dim=1)
        first = hit.float().argmax(dim=1)  # position of the first caption of this image
        ranks_i[s : s + rows] = torch.where(has, first, torch.full_like(first, n_txt))
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = (ranks_t < k).float().mean().item()
        out[f"text_retrieval_recall@{k}"] = (ranks_i < k).float().mean().item()
    out["image_retrieval_median_rank"] = float(ranks_t.float().median().item() + 1)
    out["text_retrieval_median_rank"] = float(ranks_i.float().median().item() + 1)
    return out
