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
