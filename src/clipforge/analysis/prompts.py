"""Prompt engineering and ensembling, measured (Radford et al. 2021, section 3.1.4 and Figure 4).

The paper's ablation on ImageNet: the bare class name as the prompt, one context template ("A photo
of a {label}.": +1.3 points), and the average of the normalised text embeddings of 80 templates
(+3.5 more; about +5 in all). :func:`prompt_ablation` measures the same three rows on any model and
labelled set, and each single template of the set on its own, so the spread between templates (how
much a user's one choice of wording matters) is seen beside the ensemble.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from clipforge.evaluation.embed import embed_texts
from clipforge.evaluation.zero_shot import classification_metrics, fill_template
from clipforge.models.clip import CLIP

BARE = "{c}"


def prompt_ablation(model: CLIP, image_features: torch.Tensor, targets: torch.Tensor, classnames: Sequence[str],
                    templates: Sequence[str], one: str | None = None) -> dict[str, Any]:
    """Zero-shot metrics with the bare class name, with template ``one`` (default: the set's first),
    with the ensemble of ``templates``, and with each template alone.

    Every prompt is embedded once: a template's classifier is its normalised prompt embeddings, the
    ensemble's the renormalised mean over templates (as :func:`zero_shot_classifier` builds it).
    Returns ``{"bare": metrics, "one_template": metrics, "ensemble": metrics, "single": [{"template",
    **metrics}, ...], "one": template}``; metrics as :func:`classification_metrics` gives them."""
    templates = list(dict.fromkeys(templates))
    one = one or templates[0]
    wanted = list(dict.fromkeys([BARE, one, *templates]))
    prompts = [fill_template(t, c) for t in wanted for c in classnames]
    emb = embed_texts(model, prompts).view(len(wanted), len(classnames), -1)  # normalised rows
    per = dict(zip(wanted, emb))

    def score(weights: torch.Tensor) -> dict[str, float]:
        return classification_metrics(100.0 * image_features @ weights.T, targets)

    ensemble = F.normalize(torch.stack([per[t] for t in templates]).mean(0), dim=-1)
    return {"bare": score(per[BARE]), "one_template": score(per[one]), "ensemble": score(ensemble),
            "single": [{"template": t, **score(per[t])} for t in templates], "one": one}


def ablation_summary(result: dict[str, Any], metric: str = "acc1") -> dict[str, float]:
    """The figures a reader wants: each row's ``metric``, the gains, and the single templates' range."""
    singles = [s[metric] for s in result["single"]]
    bare, one, ens = (result[k][metric] for k in ("bare", "one_template", "ensemble"))
    return {"bare": bare, "one_template": one, "ensemble": ens, "gain_template": one - bare,
            "gain_ensemble": ens - one, "gain_total": ens - bare, "single_min": min(singles),
            "single_max": max(singles), "single_mean": sum(singles) / len(singles)}


def ablation_markdown(result: dict[str, Any], dataset: str, model: str, metric: str = "acc1") -> str:
    s = ablation_summary(result, metric)
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    lines = [f"# Prompt ablation: {model} on {dataset}", "",
             f"Zero-shot {metric} (%), {len(result['single'])} templates.", "",
             "| prompt | " + metric + " % | gain (points) |", "|---|---|---|",
             f"| bare class name (`{BARE}`) | {pct(s['bare'])} | - |",
             f"| one template (`{result['one']}`) | {pct(s['one_template'])} | {100 * s['gain_template']:+.1f} |",
             f"| ensemble of {len(result['single'])} templates | {pct(s['ensemble'])} | "
             f"{100 * s['gain_ensemble']:+.1f} (total {100 * s['gain_total']:+.1f}) |", "",
             f"Each template alone: {pct(s['single_min'])} to {pct(s['single_max'])} (mean {pct(s['single_mean'])}).",
             "", "| template alone | " + metric + " % |", "|---|---|"]
    lines += [f"| `{r['template']}` | {pct(r[metric])} |" for r in sorted(result["single"], key=lambda r: -r[metric])]
    return "\n".join(lines) + "\n"


def ablation_plot(result: dict[str, Any], path: str | Path, title: str, metric: str = "acc1") -> None:
    """Bars for bare / one template / ensemble, the single templates as dots over the middle bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = ablation_summary(result, metric)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    names = ["class name", "one template", "ensemble"]
    values = [100 * s["bare"], 100 * s["one_template"], 100 * s["ensemble"]]
    ax.bar(names, values, color=["#bbb", "#8ab", "#357"])
    singles = [100 * r[metric] for r in result["single"]]
    ax.scatter([1] * len(singles), singles, color="k", s=10, zorder=3, label="each template alone")
    for i, v in enumerate(values):
        ax.text(i - 0.3, v + 0.5, f"{v:.1f}", ha="left", va="bottom", fontsize=9)
    ax.set(ylabel=f"zero-shot {metric} (%)", title=title, ylim=(0, min(100, max(values + singles) + 10)))
    ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
