"""Train/test overlap analysis: the CLIP paper's duplicate detector (Radford et al. 2021, section 5).

Each test image's nearest training image in embedding space; pairs with cosine similarity at or
above a threshold are flagged as overlapping, and accuracy is reported on the clean and the
overlapping subsets. Computed in blocks: the test x train matrix is never held whole.

Two feature spaces: the model's embedding (the paper's nearest neighbours; it finds images that
*mean* the same, and a small model puts distinct scenes of one kind closer than a re-encoded copy)
or pixel signatures (:func:`pixel_signatures`: mean-centred thumbnails, a near-duplicate detector for
copies that were rescaled, trimmed or re-encoded). Either way the threshold is calibrated rather
than fixed: near-duplicates of training images are planted (:func:`plant_duplicates`), and the
lowest threshold that flags at most 5% of training images held out of the reference set is chosen
(:func:`calibrate_threshold`); the planted duplicates it finds are its recall.
"""

from __future__ import annotations

from pathlib import Path

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
    if out["acc1_clean"] is not None and out["acc1_overlap"] is not None:
        out.update(overlap_effect(int(correct[flagged].sum()), int(flagged.sum()), out["acc1_clean"]))
    if out["acc1_clean"] is not None:
        out["acc1_all_minus_clean"] = out["acc1_all"] - out["acc1_clean"]
    return out


def overlap_effect(k: int, n: int, clean_accuracy: float, confidence: float = 0.995) -> dict[str, float]:
    """The CLIP paper's test of the overlap (section 5, Figure 17): ``k`` of the ``n`` overlapping
    images are right; the overlap's accuracy minus the clean accuracy with a Clopper-Pearson interval
    (the clean accuracy, from the much larger subset, taken as exact) and the one-sided binomial
    test's p-value that the overlap is right more often than clean images are."""
    from scipy.stats import binomtest

    test = binomtest(k, n, p=min(max(clean_accuracy, 1e-12), 1 - 1e-12), alternative="greater")
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")  # two-sided
    return {"acc1_overlap_minus_clean": k / n - clean_accuracy,
            "overlap_minus_clean_ci_low": ci.low - clean_accuracy,
            "overlap_minus_clean_ci_high": ci.high - clean_accuracy,
            "ci_confidence": confidence, "p_value_overlap_higher": float(test.pvalue)}


def pixel_signatures(images: list[str], size: int = 16) -> torch.Tensor:
    """Near-duplicate signatures: ``size`` x ``size`` RGB thumbnails, mean-centred and L2-normalised
    (their dot product is the normalised cross-correlation of the thumbnails)."""
    from clipforge.data.datasets import pixel_features
    from clipforge.errors import ImageReadError

    x, idx = pixel_features(images, size)
    if len(idx) != len(images):
        bad = sorted(set(range(len(images))) - set(idx.tolist()))
        raise ImageReadError(f"{images[bad[0]]}: unreadable for its pixel signature")
    return torch.nn.functional.normalize(x - x.mean(dim=1, keepdim=True), dim=-1)


def plant_duplicates(images: list[str], out_dir: str | Path, seed: int = 0) -> list[str]:
    """Near-duplicates of ``images`` as collections hold them: rescaled to 50-100% and back, a trim of
    at most 2% at the edges, a small brightness change, JPEG re-encoding at quality 60-95."""
    import random

    from PIL import ImageEnhance

    from clipforge.images.decode import open_image

    rng = random.Random(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, src in enumerate(images):
        img = open_image(src)
        w, h = img.size
        trim = [round(rng.uniform(0, 0.02) * side) for side in (w, h, w, h)]
        img = img.crop((trim[0], trim[1], w - trim[2], h - trim[3]))
        f = rng.uniform(0.5, 1.0)
        img = img.resize((max(1, round(w * f)), max(1, round(h * f)))).resize((w, h))
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.95, 1.05))
        path = out / f"planted-{i:05d}.jpg"
        img.save(path, quality=rng.randint(60, 95))
        paths.append(str(path))
    return paths


def calibrate_threshold(planted: torch.Tensor, clean: torch.Tensor, max_clean_flagged: float = 0.05,
                        thresholds: list[float] | None = None) -> tuple[float, list[dict]]:
    """The lowest threshold that flags at most ``max_clean_flagged`` of the clean images.

    ``planted``: each planted near-duplicate's nearest-neighbour similarity to the reference set (its
    original is there); ``clean``: the same for images that are not in it. The threshold then means
    "flags at most 5% of distinct images"; its recall on the planted duplicates says how many true
    duplicates it finds. Returns it and, for every threshold tried, recall, the share of clean images
    flagged and precision (as if duplicates and clean images were equally common).
    """
    if thresholds is None:
        thresholds = [round(0.5 + 0.005 * i, 3) for i in range(100)] + [0.999]
    rows = []
    for t in thresholds:
        recall = float((planted >= t).float().mean()) if len(planted) else 0.0
        false_rate = float((clean >= t).float().mean()) if len(clean) else 0.0
        precision = recall / (recall + false_rate) if recall + false_rate > 0 else 1.0
        rows.append({"threshold": t, "recall": recall, "clean_flagged": false_rate, "precision": precision})
    best = next((r["threshold"] for r in rows if r["clean_flagged"] <= max_clean_flagged), thresholds[-1])
    return best, rows
