"""Few-shot linear probes that never touch the validation or test images.

k examples per class are drawn (seeded) from the training split only; the regularisation strength
is chosen by stratified cross-validation inside those k-shot examples (k >= 2), never on held-out
data. (CLIP_benchmark chose it on the validation split, leaking it into "few-shot" results.)
Zero-shot-initialised few-shot starts the linear classifier at the zero-shot weights and
regularises towards them (the CLIP paper's observation that zero-shot is worth several shots).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from clipforge.evaluation.linear_probe import _fit, _metrics, _prep
from clipforge.evaluation.zero_shot import classification_metrics


def sample_k_shot(labels: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """Indices of k samples per class (all of a class that has fewer)."""
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        chosen.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    return torch.cat(chosen).sort().values


def _cv_c(x: np.ndarray, y: np.ndarray, k: int, seed: int) -> float:
    from sklearn.model_selection import StratifiedKFold

    if k < 2:
        return 1.0  # nothing to validate on without touching held-out data
    folds = StratifiedKFold(n_splits=min(k, 5), shuffle=True, random_state=seed)
    best_c, best_acc = 1.0, -1.0
    for c in [10.0**e for e in range(-3, 5)]:
        accs = [float((_fit(x[tr], y[tr], c).predict(x[va]) == y[va]).mean()) for tr, va in folds.split(x, y)]
        if np.mean(accs) > best_acc:
            best_c, best_acc = c, float(np.mean(accs))
    return best_c


def few_shot_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, k: int,
                   n_classes: int, seed: int = 0) -> dict:
    idx = sample_k_shot(train_y, k, seed)
    x, y = _prep(train_x[idx], True), train_y[idx].numpy()
    c = _cv_c(x, y, k, seed)
    clf = _fit(x, y, c)
    out = {f"lp_{m}": v for m, v in _metrics(clf, _prep(test_x, True), test_y.numpy(), n_classes).items()}
    out.update(fewshot_k=k, C=c, seed=seed, n_train=len(idx))
    return out


def zero_shot_init_few_shot(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                            zero_shot_weights: torch.Tensor, k: int, seed: int = 0, scale: float = 100.0,
                            pull: float = 1.0, steps: int = 100) -> dict:
    """Logistic regression from the zero-shot classifier, with ``pull * |W - W_zs|^2`` keeping it near."""
    idx = sample_k_shot(train_y, k, seed)
    x = F.normalize(train_x[idx].double(), dim=-1)
    y = train_y[idx]
    w0 = zero_shot_weights.double() * scale
    w = w0.clone().requires_grad_()
    b = torch.zeros(w.shape[0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + pull * ((w - w0) ** 2).sum() / len(y)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        logits = F.normalize(test_x.double(), dim=-1) @ w.T + b
    out = {f"lp_{m}": v for m, v in classification_metrics(logits, test_y).items()}
    out.update(fewshot_k=k, seed=seed, zero_shot_init=True, pull=pull)
    return out
