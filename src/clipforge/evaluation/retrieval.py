"""Image-text retrieval recall@k with CLIP_benchmark's definitions, computed in blocks.

``image_retrieval_recall@k``: share of texts whose image is among the k images most similar to
the text. ``text_retrieval_recall@k``: share of images with at least one of their captions among
the k most similar texts. The similarity matrix is never held whole: queries go in blocks.
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
        pos = sims.gather(1, t2i[s : s + block, None])
        ranks_t[s : s + block] = (sims > pos).sum(dim=1)
    # image -> text: best rank over the image's captions.
    ranks_i = torch.full((n_img,), n_txt, dtype=torch.long)
    for s in range(0, n_img, block):
        sims = image_features[s : s + block] @ text_features.T  # [b, T]
        owner = t2i[None, :] == torch.arange(s, min(s + block, n_img))[:, None]
        best_pos = sims.masked_fill(~owner, float("-inf")).max(dim=1).values
        ranks_i[s : s + block] = (sims > best_pos[:, None]).sum(dim=1)
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = (ranks_t < k).float().mean().item()
        out[f"text_retrieval_recall@{k}"] = (ranks_i < k).float().mean().item()
    out["image_retrieval_median_rank"] = float(ranks_t.float().median().item() + 1)
    out["text_retrieval_median_rank"] = float(ranks_i.float().median().item() + 1)
    return out
