"""How a class is composed of concepts: a sparse linear probe on concept scores (the CLIP paper's
"algebra of concepts": Radford et al. 2021 and Goh et al. 2021 express classes as sparse
combinations of a vocabulary's directions).

Each image becomes its cosine similarity to each concept prompt's text embedding (a vocabulary a
user names: "red", "circle", "striped", ...), standardised on the training images. An
L1-regularised multinomial logistic regression from these scores to the classes is fitted for a
sweep of regularisation strengths: the weaker the penalty, the more concepts each class uses and the
higher the accuracy. The trade-off is plotted, and at the chosen strength (the sparsest within
``tolerance`` of the best test accuracy) each class is listed with its few positive concepts.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

C_GRID = (0.01, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 3.0)


def concept_scores(image_features: torch.Tensor, concept_weights: torch.Tensor) -> np.ndarray:
    """Cosine similarity of each (normalised) image feature to each concept embedding, [N, K]."""
    return (image_features @ concept_weights.T).numpy().astype(np.float64)


def sparse_concept_probe(train_scores: np.ndarray, y_train: np.ndarray, test_scores: np.ndarray, y_test: np.ndarray,
                         concepts: Sequence[str], classes: Sequence[str], c_grid: Sequence[float] = C_GRID,
                         tolerance: float = 0.01, top: int = 5) -> dict[str, Any]:
    """The sweep (``curve``: C, test accuracy, mean number of concepts with a non-zero weight per
    class) and, at the chosen C, each class's concepts with positive weight, largest first."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    mean, std = train_scores.mean(0), train_scores.std(0) + 1e-8
    xtr, xte = (train_scores - mean) / std, (test_scores - mean) / std
    fits, curve = [], []
    for c in c_grid:
        clf = LogisticRegression(C=c, l1_ratio=1.0, solver="saga", max_iter=2000, tol=1e-4, random_state=0)
        with warnings.catch_warnings(), threadpool_limits(limits=1):
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(xtr, y_train)
        w = _full_coef(clf, len(classes))
        acc = float((clf.predict(xte) == y_test).mean())
        curve.append({"C": c, "acc1": acc, "concepts_per_class": float((np.abs(w) > 1e-6).sum(1).mean()),
                      "converged": bool(np.all(clf.n_iter_ < 2000))})
        fits.append(w)
    best = max(p["acc1"] for p in curve)
    chosen = min((i for i, p in enumerate(curve) if p["acc1"] >= best - tolerance),
                 key=lambda i: curve[i]["concepts_per_class"])
    w = fits[chosen]
    present = sorted(set(y_train.tolist()))
    composition = {}
    for k in present:
        order = np.argsort(-w[k])
        composition[classes[k]] = [(concepts[j], float(w[k, j])) for j in order[:top] if w[k, j] > 1e-6]
    return {"curve": curve, "chosen": curve[chosen], "composition": composition}


def _full_coef(clf: Any, n_classes: int) -> np.ndarray:
    """[n_classes, K] weights whatever classes the training set held (absent ones stay zero)."""
    coef = clf.coef_
    if coef.shape[0] == 1:  # binary: one row for the positive class
        coef = np.vstack([-coef, coef])
    out = np.zeros((n_classes, coef.shape[1]))
    out[clf.classes_] = coef
    return out


def composition_hits(composition: dict[str, list[tuple[str, float]]], concepts: list[str] | None = None) -> float:
    """Share of classes whose top n concepts are exactly the n words of the class name ("red circle" =
    red + circle; "seven" = seven): the probe found the algebra. Only classes whose name words are all
    in the vocabulary (``concepts``; default: every class) count; 0 when none does."""
    vocab = set(concepts) if concepts is not None else None
    hits = [set(c for c, _ in parts[: len(name.split())]) == set(name.split()) for name, parts in composition.items()
            if vocab is None or set(name.split()) <= vocab]
    return float(np.mean(hits)) if hits else 0.0


def concepts_markdown(result: dict[str, Any], title: str, limit: int = 30) -> str:
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    lines = [f"# Concept composition: {title}", "", "| C | test acc1 % | concepts per class |", "|---|---|---|"]
    lines += [f"| {p['C']:g} | {pct(p['acc1'])} | {p['concepts_per_class']:.1f} |" for p in result["curve"]]
    ch = result["chosen"]
    lines += ["", f"Chosen: C = {ch['C']:g} (the sparsest within 1 point of the best), {pct(ch['acc1'])}% with "
              f"{ch['concepts_per_class']:.1f} concepts per class.", "", "| class | its concepts (weight) |",
              "|---|---|"]
    for name, parts in list(result["composition"].items())[:limit]:
        lines.append(f"| {name} | " + " + ".join(f"{c} ({w:.2f})" for c, w in parts) + " |")
    if len(result["composition"]) > limit:
        lines.append(f"| ... | {len(result['composition']) - limit} more in the JSON |")
    return "\n".join(lines) + "\n"


def concepts_plot(result: dict[str, Any], path: str | Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p["concepts_per_class"] for p in result["curve"]]
    ys = [100 * p["acc1"] for p in result["curve"]]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(xs, ys, "o-")
    for p, x, y in zip(result["curve"], xs, ys):
        ax.annotate(f"C={p['C']:g}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ch = result["chosen"]
    ax.scatter([ch["concepts_per_class"]], [100 * ch["acc1"]], s=120, facecolors="none", edgecolors="r",
               label="chosen")
    ax.set(xlabel="concepts with a non-zero weight, per class", ylabel="test acc1 (%)", title=title)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
