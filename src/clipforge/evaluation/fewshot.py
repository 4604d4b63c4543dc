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

    per_class = int(np.unique(y, return_counts=True)[1].min())
    if per_class < 2:
        return 1.0  # nothing to validate on without touching held-out data
    folds = StratifiedKFold(n_splits=min(per_class, 5), shuffle=True, random_state=seed)
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


# Strengths of the pull towards the zero-shot classifier (and of the plain probe's L2 penalty).
PULLS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
Candidate = tuple[str, float]  # ("zero-shot", 0) | ("zero-shot init", pull) | ("plain", pull)


def _fit_candidate(zs: torch.Tensor, x: torch.Tensor, y: torch.Tensor, n_classes: int, cand: Candidate,
                   steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(alpha, delta, b) of logits = alpha * zs + x delta^T + b, minimising CE + pull |delta|^2 / n.

    ``zs`` are the zero-shot cosine logits of ``x``. The problem is convex; "zero-shot" keeps
    alpha = 100 (CLIP's scale), delta = 0, b = 0; "plain" fixes alpha = 0 (a linear probe). Solved
    with SciPy's L-BFGS-B on the analytic gradient (tiny problems: torch's per-op overhead dominated),
    alpha starting at 10 (from 100 the saturated softmax makes L-BFGS crawl).
    """
    from scipy.optimize import minimize

    kind, pull = cand
    n, d = x.shape
    if kind == "zero-shot":
        return (torch.tensor(100.0, dtype=torch.float64), torch.zeros(n_classes, d, dtype=torch.float64),
                torch.zeros(n_classes, dtype=torch.float64))
    zn, xn = zs.double().numpy(), x.double().numpy()
    onehot = np.eye(n_classes)[y.numpy()]
    learn_alpha = kind != "plain"

    def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        alpha = theta[0] if learn_alpha else 0.0
        delta = theta[int(learn_alpha): int(learn_alpha) + n_classes * d].reshape(n_classes, d)
        b = theta[-n_classes:]
        logits = alpha * zn + xn @ delta.T + b
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        loss = -(onehot * logp).sum() / n + pull * (delta**2).sum() / n
        g = (np.exp(logp) - onehot) / n
        grads = [g.T @ xn + 2 * pull * delta / n, g.sum(axis=0)]
        if learn_alpha:
            grads.insert(0, np.array([(g * zn).sum()]))
        return float(loss), np.concatenate([gr.ravel() for gr in grads])

    theta0 = np.zeros(int(learn_alpha) + n_classes * d + n_classes)
    if learn_alpha:
        theta0[0] = 10.0
    theta = minimize(loss_grad, theta0, jac=True, method="L-BFGS-B", options={"maxiter": steps}).x
    alpha = theta[0] if learn_alpha else 0.0
    delta = theta[int(learn_alpha): int(learn_alpha) + n_classes * d].reshape(n_classes, d)
    return (torch.tensor(alpha, dtype=torch.float64), torch.from_numpy(delta.copy()),
            torch.from_numpy(theta[-n_classes:].copy()))


def _cv_candidate(zs: torch.Tensor, x: torch.Tensor, y: torch.Tensor, n_classes: int, k: int, seed: int,
                  steps: int, pulls: tuple[float, ...]) -> Candidate:
    """The candidate with the best held-out accuracy inside the k-shot examples.

    Candidates: the zero-shot classifier itself, the zero-shot-initialised probe at each pull and the
    plain probe at each penalty, so the choice can always fall back to either end. Ties go to the
    earlier (more zero-shot) candidate. With k = 1 the folds leave whole classes out of training:
    only the zero-shot weights still score those, which is what one example per class can support.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    candidates = [("zero-shot", 0.0)] + [("zero-shot init", p) for p in sorted(pulls, reverse=True)] + \
        [("plain", p) for p in sorted(pulls, reverse=True)]
    if k < 2:
        # One example per class: folds cannot score a plain probe (each fold lacks the held-out classes),
        # but the zero-shot classifier never saw the examples, so its accuracy on them is honest. One
        # no better than chance (within two standard errors) carries nothing to start from.
        chance = 1.0 / n_classes
        zs_acc = float((zs.argmax(1) == y).double().mean())
        if zs_acc <= chance + 2 * (chance * (1 - chance) / len(y)) ** 0.5:
            return ("plain", 1.0)
    if len(y) < 2:
        return candidates[0]
    per_class = int(torch.unique(y, return_counts=True)[1].min())
    folds = (StratifiedKFold(n_splits=min(per_class, 5), shuffle=True, random_state=seed) if per_class >= 2
             else KFold(n_splits=min(len(y), 5), shuffle=True, random_state=seed))
    splits = list(folds.split(x.numpy(), y.numpy()))
    best, best_acc = candidates[0], -1.0
    for cand in candidates:
        accs = []
        for tr, va in splits:
            alpha, delta, b = _fit_candidate(zs[tr], x[tr], y[tr], n_classes, cand, steps)
            accs.append(float(((alpha * zs[va] + x[va] @ delta.T + b).argmax(1) == y[va]).double().mean()))
        if np.mean(accs) > best_acc + 1e-9:
            best, best_acc = cand, float(np.mean(accs))
    return best


def zero_shot_init_few_shot(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                            zero_shot_weights: torch.Tensor, k: int, seed: int = 0, pull: float | None = None,
                            steps: int = 200) -> dict:
    """A few-shot classifier that starts from the zero-shot one: logits = alpha * (x . W_zs) + x . D + b,
    with ``pull * |D|^2 / n`` keeping it near the zero-shot classifier (alpha, D, b learned).

    ``pull=None`` chooses by cross-validation inside the k-shot examples (as the plain probe chooses
    C, never on held-out data) among the zero-shot classifier, this model at each of :data:`PULLS`
    and the plain probe: a good zero-shot classifier is kept, a poor one left behind.
    """
    idx = sample_k_shot(train_y, k, seed)
    x = F.normalize(train_x[idx].double(), dim=-1)
    y = train_y[idx]
    w0 = F.normalize(zero_shot_weights.double(), dim=-1)
    n_classes = w0.shape[0]
    cand = _cv_candidate(x @ w0.T, x, y, n_classes, k, seed, steps, PULLS) if pull is None \
        else ("zero-shot init", pull)
    alpha, delta, b = _fit_candidate(x @ w0.T, x, y, n_classes, cand, steps)
    xt = F.normalize(test_x.double(), dim=-1)
    logits = alpha * (xt @ w0.T) + xt @ delta.T + b
    out = {f"lp_{m}": v for m, v in classification_metrics(logits, test_y).items()}
    out.update(fewshot_k=k, seed=seed, zero_shot_init=True, classifier=cand[0], pull=cand[1],
               chosen_by_cv=pull is None, n_train=len(idx))
    return out
