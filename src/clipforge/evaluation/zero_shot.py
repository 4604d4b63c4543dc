"""Zero-shot classification with prompt ensembling (Radford et al. 2021, section 3.1.4)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from clipforge.models.clip import CLIP


def fill_template(template: str, classname: str) -> str:
    """Templates may use ``{}`` or CLIP_benchmark's ``{c}``; ``{article}`` becomes "a" or "an"."""
    article = "an" if classname[:1].lower() in "aeiou" else "a"
    return template.replace("{article}", article).replace("{c}", classname).replace("{}", classname)


@torch.no_grad()
def zero_shot_classifier(model: CLIP, classnames: Sequence[str], templates: Sequence[str] | Sequence[Sequence[str]],
                         batch_size: int = 256) -> torch.Tensor:
    """Class weights [C, D]: each prompt embedding normalised, averaged per class, renormalised.

    ``templates`` is either one list of templates for every class, or one list of prompts per class.
    """
    from clipforge.evaluation.embed import embed_texts

    per_class = isinstance(templates[0], (list, tuple))
    weights = []
    for i, name in enumerate(classnames):
        prompts = list(templates[i]) if per_class else [fill_template(t, name) for t in templates]  # type: ignore[arg-type]
        emb = embed_texts(model, prompts, batch_size)
        weights.append(F.normalize(emb.mean(dim=0), dim=-1))
    return torch.stack(weights)


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """``acc1``, ``acc5`` (only with at least 5 classes) and ``mean_per_class_recall``.

    Mean per-class recall averages over the classes that have at least one sample (as
    scikit-learn's balanced accuracy, which CLIP_benchmark uses).
    """
    n_classes = logits.shape[1]
    out: dict[str, float] = {}
    ranked = logits.topk(min(5, n_classes), dim=1).indices
    out["acc1"] = (ranked[:, 0] == targets).float().mean().item()
    if n_classes >= 5:
        out["acc5"] = (ranked == targets[:, None]).any(dim=1).float().mean().item()
    pred = ranked[:, 0]
    recalls = [(pred[targets == c] == c).float().mean().item() for c in targets.unique().tolist()]
    out["mean_per_class_recall"] = float(sum(recalls) / len(recalls)) if recalls else 0.0
    return out


def zero_shot_logits(model: CLIP, image_features: torch.Tensor, classnames: Sequence[str],
                     templates: Sequence[str] | Sequence[Sequence[str]]) -> torch.Tensor:
    """100 * cosine similarity of each image to each class (CLIP's scale for zero-shot)."""
    return 100.0 * image_features @ zero_shot_classifier(model, classnames, templates).T


def confusion_matrix_png(targets: torch.Tensor, preds: torch.Tensor, classnames: Sequence[str], path: str) -> None:
    """Row-normalised confusion matrix as a PNG (class names on both axes up to 40 classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classnames)
    mat = torch.zeros(n, n)
    for t, p in zip(targets.tolist(), preds.tolist()):
        mat[t, p] += 1
    mat = mat / mat.sum(dim=1, keepdim=True).clamp(min=1)
    size = min(20.0, 2 + 0.3 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(mat.numpy(), cmap="Blues", vmin=0, vmax=1)
    if n <= 40:
        ax.set_xticks(range(n), list(classnames), rotation=90, fontsize=7)
        ax.set_yticks(range(n), list(classnames), fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title="zero-shot confusion (rows sum to 1)")
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
