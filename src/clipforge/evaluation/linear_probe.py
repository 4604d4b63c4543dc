"""Linear probes on frozen features, with the CLIP paper's protocol (Radford et al. 2021, appendix A.3).

L2-regularised logistic regression (L-BFGS, scikit-learn). The regularisation strength is chosen on
a validation split carved from the training data: a sweep of C over 1e-6 .. 1e6 (one point per
decade), then a finer sweep around the best; the model is then refit on train + validation with
that C and scored on the test set. Runs on the CPU.

The solver runs on one BLAS thread with a fixed tolerance and iteration cap, so the result does not
depend on the machine's thread count (a poorly converged L-BFGS at a large C lands somewhere
different with each thread count's summation order); whether every fit converged is reported.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from clipforge.evaluation.zero_shot import classification_metrics

MAX_ITER = 1000
TOL = 1e-4  # scikit-learn's default, stated: part of what makes the result reproducible


def _fit(x: np.ndarray, y: np.ndarray, c: float, max_iter: int = MAX_ITER):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    clf = LogisticRegression(C=c, max_iter=max_iter, tol=TOL, solver="lbfgs")
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    clf.converged_ = bool(np.all(clf.n_iter_ < max_iter))
    return clf


def _accuracy(clf, x: np.ndarray, y: np.ndarray) -> float:
    return float((clf.predict(x) == y).mean())


def choose_c(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
             coarse: Sequence[float] | None = None, refine_steps: int = 8) -> tuple[float, list[tuple[float, float]]]:
    """Best C on the validation split: a coarse log grid, then ``refine_steps`` points around the best."""
    grid = list(coarse) if coarse is not None else [10.0**e for e in range(-6, 7)]
    curve = [(c, _accuracy(_fit(train_x, train_y, c), val_x, val_y)) for c in grid]
    best = max(range(len(curve)), key=lambda i: (curve[i][1], -i))
    lo = np.log10(grid[max(0, best - 1)])
    hi = np.log10(grid[min(len(grid) - 1, best + 1)])
    tried = {c for c, _ in curve}
    for c in np.logspace(lo, hi, refine_steps + 2)[1:-1]:
        if float(c) not in tried:
            curve.append((float(c), _accuracy(_fit(train_x, train_y, float(c)), val_x, val_y)))
    best_c, _ = max(curve, key=lambda ca: (ca[1], -abs(np.log10(ca[0]) - np.log10(grid[best]))))
    return best_c, sorted(curve)


def split_train_val(labels: np.ndarray, val_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified when every class has at least two samples."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    return train_test_split(idx, test_size=val_fraction, random_state=seed, stratify=stratify)


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 n_classes: int | None = None, val_fraction: float = 0.2, seed: int = 0, normalize: bool = True,
                 c: float | None = None) -> dict:
    """CLIP_benchmark's keys: ``lp_acc1``, ``lp_acc5``, ``lp_mean_per_class_recall``, plus the chosen C."""
    xtr, xte = _prep(train_x, normalize), _prep(test_x, normalize)
    ytr, yte = train_y.numpy(), test_y.numpy()
    curve: list[tuple[float, float]] = []
    if c is None:
        tr, va = split_train_val(ytr, val_fraction, seed)
        c, curve = choose_c(xtr[tr], ytr[tr], xtr[va], ytr[va])
    clf = _fit(xtr, ytr, c)
    out = {f"lp_{k}": v for k, v in _metrics(clf, xte, yte, n_classes or int(max(ytr.max(), yte.max())) + 1).items()}
    out.update(C=c, n_train=len(ytr), n_test=len(yte), c_curve=curve, converged=clf.converged_, max_iter=MAX_ITER,
               tol=TOL, blas_threads=1)
    return out


def _prep(x: torch.Tensor, normalize: bool) -> np.ndarray:
    x = x.double()
    return (torch.nn.functional.normalize(x, dim=-1) if normalize else x).numpy()


def _metrics(clf, x: np.ndarray, y: np.ndarray, n_classes: int) -> dict:
    probs = np.full((len(y), n_classes), -np.inf)
    probs[:, clf.classes_] = clf.predict_log_proba(x)
    return classification_metrics(torch.from_numpy(probs), torch.from_numpy(y))
