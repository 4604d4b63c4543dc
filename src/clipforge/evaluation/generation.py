"""Metrics of generated images under a judge CLIP (pure functions on features).

* CLIP-score: 100 * max(cos(image, prompt), 0), averaged (torchmetrics' ``CLIPScore``; Hessel et
  al. 2021 without their 2.5 weight);
* R-precision (Xu et al. 2018, as DALL-E and the text-to-image GAN papers report it): the prompt
  ranked against ``distractors`` other captions by the judge; the fraction ranked first;
* Frechet distance (Heusel et al. 2017) between Gaussians fitted to two sets of features:
  ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)); here on the judge's image features rather
  than Inception's (there is no Inception offline, and these scenes are not ImageNet).

The judge must never be a model that guided the generator (see ``clipforge eval generation``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def clip_score(image_features: torch.Tensor, text_features: torch.Tensor) -> float:
    """Mean of 100 * max(cos, 0) over matched rows."""
    cos = (F.normalize(image_features.double(), dim=-1) * F.normalize(text_features.double(), dim=-1)).sum(-1)
    return float(100 * cos.clamp(min=0).mean())


def r_precision(image_features: torch.Tensor, prompt_index: torch.Tensor, text_features: torch.Tensor,
                distractors: int = 99, seed: int = 0) -> float:
    """For each image, its prompt (row ``prompt_index[i]`` of ``text_features``) against
    ``distractors`` other texts drawn at random from ``text_features``: the fraction ranked first.
    Texts equal to the prompt (same row) are never drawn as distractors."""
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(image_features.double(), dim=-1)
    txt = F.normalize(text_features.double(), dim=-1)
    n_text = len(txt)
    if n_text < 2:
        raise ValueError("R-precision needs at least two texts")
    k = min(distractors, n_text - 1)
    hits = 0
    for i in range(len(img)):
        own = int(prompt_index[i])
        others = torch.randperm(n_text - 1, generator=g)[:k]
        others = others + (others >= own).long()  # skip the prompt's own row
        sims = txt[torch.cat([torch.tensor([own]), others])] @ img[i]
        hits += int(sims.argmax() == 0)
    return hits / max(1, len(img))


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to feature sets ``a`` [N, d] and ``b`` [M, d]."""
    from scipy import linalg

    x, y = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = x.mean(0), y.mean(0)
    s_a, s_b = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = linalg.sqrtm(s_a @ s_b)
    if not np.isfinite(covmean).all():  # near-singular product: regularise as the reference code does
        eps = np.eye(len(s_a)) * 1e-6
        covmean = linalg.sqrtm((s_a + eps) @ (s_b + eps))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(covmean))
