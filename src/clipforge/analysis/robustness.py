"""Robustness to distribution shift and effective robustness (Radford et al. 2021, section 3.3;
Taori et al. 2020).

Classifiers fitted on a source set are scored on the source's test images and on shifted versions
of them. Supervised baselines (logistic regressions and small MLPs on pixels, over a range of
strengths and training-set sizes) give the trend that the paper found for ImageNet models: shifted
accuracy is close to a linear function of source accuracy once both are logit-transformed (fitted
here by Theil-Sen, robust to a baseline that collapses under one shift). A model's *effective
robustness* is its shifted accuracy minus the trend's value at its source accuracy: above zero, it
keeps more under the shift than its source accuracy predicts. The paper found zero-shot CLIP far
above the trend, and a linear probe fitted on the source (ImageNet) pulled back towards it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

# --- the trend and effective robustness -----------------------------------------------------------


def logit(p: np.ndarray | float, n: int | None = None) -> np.ndarray:
    """log(p / (1 - p)), with p kept half a sample (or 1e-4) away from 0 and 1."""
    eps = 0.5 / n if n else 1e-4
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(p / (1 - p))


def fit_trend(source: Sequence[float], shifted: Sequence[float], n: int | None = None) -> tuple[float, float]:
    """The line logit(shifted) = slope * logit(source) + intercept through the baselines, by Theil-Sen
    (the median of the pairwise slopes): one baseline that collapses under a shift (an MLP under
    noise) does not tilt the line as it tilts a least-squares fit."""
    from scipy.stats import theilslopes

    x, y = logit(np.asarray(source), n), logit(np.asarray(shifted), n)
    if len(x) < 2 or np.ptp(x) < 1e-9:
        raise ValueError("the trend needs at least two baselines with different source accuracies")
    slope, intercept, _, _ = theilslopes(y, x, method="joint")  # intercept: median of y - slope x
    return float(slope), float(intercept)


def trend_at(trend: tuple[float, float], source: float, n: int | None = None) -> float:
    z = trend[0] * float(logit(source, n)) + trend[1]
    return float(1 / (1 + np.exp(-z)))


def effective_robustness(trend: tuple[float, float], source: float, shifted: float, n: int | None = None) -> float:
    """Shifted accuracy above what the baselines' trend predicts at this source accuracy."""
    return shifted - trend_at(trend, source, n)


# --- image shifts ---------------------------------------------------------------------------------


def blur(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius=0.03 * min(img.size)))


def noise(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 30, size=(img.size[1], img.size[0], 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def jitter(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Brightness, contrast and saturation in [0.5, 1.5]; never the hue (colour names stay true)."""
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhance(img).enhance(float(rng.uniform(0.5, 1.5)))
    return img


IMAGE_SHIFTS: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "blur": blur, "noise": noise, "jitter": jitter}


def apply_shift(images: Sequence[Image.Image], shift: str, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [IMAGE_SHIFTS[shift](img.convert("RGB"), rng) for img in images]


# --- the classifiers --------------------------------------------------------------------------------


def pixels(images: Sequence[Image.Image], size: int = 32) -> np.ndarray:
    """Raw pixels in [0, 1] at ``size`` x ``size`` (the supervised baselines' input)."""
    return np.stack([np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC),
                                dtype=np.float32).ravel() / 255 for im in images])


SUBSET_FRACTIONS = (0.03, 0.1, 0.3)


def supervised_baselines(x: np.ndarray, y: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Classifiers of a range of strengths on pixels: logistic regression at four C's, two MLPs, and
    logistic regressions fitted on 3%, 10% and 30% of the training images (per class). The subsets
    spread the baselines' source accuracies, so that the trend is fitted over a range rather than
    extrapolated from a cluster (strong baselines on easy data all land within a few points)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    models: dict[str, Any] = {f"pixels LR C={c:g}": LogisticRegression(C=c, max_iter=500) for c in (1e-3, 1e-2, 0.1, 1)}
    # Standardised inputs: an MLP on raw [0, 1] pixels of textured scenes stays at chance.
    models |= {f"pixels MLP {it} it": make_pipeline(StandardScaler(), MLPClassifier((256,), max_iter=it,
                                                                                 random_state=seed))
               for it in (20, 200)}
    fitted = _fit_all(models, x, y)
    sizes = set()
    for fraction in SUBSET_FRACTIONS:
        keep = class_subset(y, fraction, seed)
        if len(set(y[keep].tolist())) > 1 and len(keep) not in sizes:  # small classes: fractions can coincide
            sizes.add(len(keep))
            fitted |= _fit_all({f"pixels LR on {fraction:.0%}": LogisticRegression(C=1, max_iter=500)},
                               x[keep], y[keep])
    return fitted


def class_subset(y: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Indices of ``fraction`` of each class's samples (at least one per class), drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        keep.extend(rng.choice(idx, size=max(1, round(fraction * len(idx))), replace=False).tolist())
    return np.array(sorted(keep))


def _fit_all(models: dict[str, Any], x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Fit each scikit-learn model on one BLAS thread (reproducible across machines)."""
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message="The number of unique classes")  # the small subsets
        for m in models.values():
            m.fit(x, y)
    return models


def linear_probes(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Logistic regressions on the model's features, fitted on the source (the paper's adaptation)."""
    from sklearn.linear_model import LogisticRegression

    return _fit_all({f"linear probe C={c:g}": LogisticRegression(C=c, max_iter=1000) for c in (0.1, 1, 10)}, x, y)


def robustness_table(points: dict[str, dict[str, float]], baselines: Sequence[str], n: int) -> dict[str, Any]:
    """``points``: classifier -> {"source": acc, shift: acc, ...}. Per shift, the baselines' trend
    and every classifier's effective robustness."""
    shifts = [k for k in next(iter(points.values())) if k != "source"]
    sources = [points[b]["source"] for b in baselines]
    out: dict[str, Any] = {}
    for s in shifts:
        trend = fit_trend(sources, [points[b][s] for b in baselines], n)
        out[s] = {"trend": {"slope": trend[0], "intercept": trend[1]},
                  "baselines_source_range": [min(sources), max(sources)],
                  "effective_robustness": {k: effective_robustness(trend, p["source"], p[s], n)
                                           for k, p in points.items()}}
    return out


def trend_caveats(points: dict[str, dict[str, float]], table: dict[str, Any], highlight: Sequence[str]) -> list[str]:
    """Where an effective robustness is read off the trend beyond the baselines' source accuracies, or
    off a trend that falls as source accuracy rises, it is an extrapolation: say so."""
    notes = []
    lo, hi = next(iter(table.values()))["baselines_source_range"]
    outside = [k for k in highlight if k in points and not lo <= points[k]["source"] <= hi]
    if outside:
        notes.append(f"The baselines' source accuracies span {100 * lo:.1f}-{100 * hi:.1f}%; "
                     f"{', '.join(outside)} lie outside it, so their effective robustness extrapolates the trend.")
    falling = [s for s, t in table.items() if t["trend"]["slope"] < 0]
    if falling:
        notes.append(f"The trend falls with source accuracy under {', '.join(falling)}: the baselines do not follow "
                     "a line there, and effective robustness against it is not meaningful.")
    return notes


def robustness_markdown(points: dict[str, dict[str, float]], table: dict[str, Any], title: str,
                        highlight: Sequence[str]) -> str:
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    shifts = list(table)
    lines = [f"# Robustness under distribution shift: {title}", "",
             "Accuracy (%) on the source test images and under each shift; in brackets the effective robustness "
             "(points above the trend of the supervised pixel baselines, fitted on logit scales).", "",
             "| classifier | source | " + " | ".join(shifts) + " |", "|" + "---|" * (2 + len(shifts))]
    for name, p in points.items():
        bold = "**" if name in highlight else ""
        cells = [f"{pct(p[s])} ({100 * table[s]['effective_robustness'][name]:+.1f})" for s in shifts]
        lines.append(f"| {bold}{name}{bold} | {pct(p['source'])} | " + " | ".join(cells) + " |")
    notes = trend_caveats(points, table, highlight)
    if notes:
        lines += [""] + [f"Note: {n}" for n in notes]
    return "\n".join(lines) + "\n"


def robustness_plot(points: dict[str, dict[str, float]], table: dict[str, Any], baselines: Sequence[str],
                    path: str | Path, title: str, n: int) -> None:
    """The paper's Figure 13 style: shifted against source accuracy on logit axes, one panel per
    shift; y = x dashed, the baselines' trend solid; zero-shot a star, linear probes diamonds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shifts = list(table)
    cols = min(3, len(shifts))
    rows = (len(shifts) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4 * rows), squeeze=False)
    ticks = np.array([0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99])
    # The axes reach every point (accuracies near 100% sit far out on a logit scale).
    extreme = max(logit(v, n) for p in points.values() for v in p.values())
    for ax, s in zip(axes.ravel(), shifts):
        lo, hi = logit(0.02), max(logit(0.995), extreme + 0.3)
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x")
        xs = np.linspace(lo, hi, 50)
        tr = table[s]["trend"]
        ax.plot(xs, tr["slope"] * xs + tr["intercept"], color="#888", lw=1.2, label="baselines' trend")
        for name, p in points.items():
            x, y = logit(p["source"], n), logit(p[s], n)
            if name in baselines:
                ax.scatter(x, y, color="#888", s=18)
            elif name.startswith("zero-shot"):
                ax.scatter(x, y, marker="*", s=180, color="#c33", label=name, zorder=3)
            else:
                ax.scatter(x, y, marker="D", s=30, color="#36a", label=name if "C=1" in name else None, zorder=3)
        ax.set_xticks(logit(ticks), [f"{100 * t:g}" for t in ticks], fontsize=7)
        ax.set_yticks(logit(ticks), [f"{100 * t:g}" for t in ticks], fontsize=7)
        ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="source accuracy (%)", ylabel=f"{s} accuracy (%)", title=s)
        ax.legend(fontsize=6, loc="upper left")
    for ax in axes.ravel()[len(shifts):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


# --- the experiment -----------------------------------------------------------------------------------


def robustness_experiment(model: Any, train: tuple[list[Image.Image], np.ndarray],
                          test: tuple[list[Image.Image], np.ndarray],
                          shifted: dict[str, tuple[list[Image.Image], np.ndarray]], classes: Sequence[str],
                          templates: Sequence[str] | Sequence[Sequence[str]], seed: int = 0,
                          progress: bool = False) -> dict[str, Any]:
    """Zero-shot, linear probes on the model's features and the supervised pixel baselines, each
    scored on the source test set and every shifted set. Returns ``points`` (classifier -> set ->
    accuracy), ``table`` (:func:`robustness_table`), ``baselines`` and ``n`` (test images)."""
    from clipforge.evaluation.embed import embed_pil
    from clipforge.evaluation.zero_shot import zero_shot_classifier
    from clipforge.utils.progress import progress_bar

    sets = {"source": test, **shifted}
    weights = zero_shot_classifier(model, classes, templates).numpy()
    with progress_bar("robustness", total=2 + len(sets), enabled=progress) as bar:
        xtr = embed_pil(model, train[0]).numpy()
        probes = linear_probes(xtr, train[1])
        bar.advance()
        base = supervised_baselines(pixels(train[0]), train[1], seed)
        bar.advance()
        points: dict[str, dict[str, float]] = {"zero-shot": {}, **{k: {} for k in probes}, **{k: {} for k in base}}
        for name, (imgs, y) in sets.items():
            feats, px = embed_pil(model, imgs).numpy(), pixels(imgs)
            points["zero-shot"][name] = float(((feats @ weights.T).argmax(1) == y).mean())
            for k, m in probes.items():
                points[k][name] = float((m.predict(feats) == y).mean())
            for k, m in base.items():
                points[k][name] = float((m.predict(px) == y).mean())
            bar.advance()

    n = len(test[1])
    return {"points": points, "table": robustness_table(points, list(base), n), "baselines": list(base), "n": n}
