"""Train/test overlap analysis: the CLIP paper's duplicate detector (Radford et al. 2021, section 5).

Each test image's nearest training image in embedding space; pairs with cosine similarity at or
above a threshold are flagged as overlapping, and accuracy is reported on the clean and the
overlapping subsets. Computed in blocks: the test x train matrix is never held whole.
"""

from __future__ import annotations

import torch


def nearest_train(test_features: torch.Tensor, train_features: torch.Tensor,
                  block: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """For each test feature: (index of the most similar training feature, its cosine similarity)."""
    sims, idx = [], []
    for s in range(0, len(test_features), block):
        best = (test_features[s : s + block] @ train_features.T).max(dim=1)
        sims.append(best.values)
        idx.append(best.indices)
    return torch.cat(idx), torch.cat(sims)


def overlap_report(test_features: torch.Tensor, train_features: torch.Tensor, correct: torch.Tensor,
                   threshold: float = 0.95) -> dict:
    """``correct``: per test image, whether the evaluated classifier got it right."""
    idx, sims = nearest_train(test_features, train_features)
    flagged = sims >= threshold
    out = {
        "threshold": threshold,
        "n_test": int(len(flagged)),
        "n_overlap": int(flagged.sum()),
        "overlap_fraction": float(flagged.float().mean()) if len(flagged) else 0.0,
        "acc1_all": float(correct.float().mean()) if len(correct) else 0.0,
        "acc1_clean": float(correct[~flagged].float().mean()) if (~flagged).any() else None,
        "acc1_overlap": float(correct[flagged].float().mean()) if flagged.any() else None,
        "pairs": [(int(i), int(j), float(s)) for i, (j, s) in enumerate(zip(idx, sims)) if s >= threshold],
    }
    return out
