"""Class-design audit: what candidate classes added to a zero-shot label set absorb, and from whom
(Radford et al. 2021, section 7.1: adding "criminal" and non-human classes to FairFace's label set
moved misclassifications between race and age groups).

The model classifies once with the label set as given and once with the candidate classes added.
For each true class, and for each group of a grouping attribute (a CSV column: age, or a scene's
size or background), we count the images each added class takes, and test with a chi-square test
of independence whether the absorption depends on the group. Grouping is what turns "the extra
classes cost 3 points" into "they cost the small objects 9 points and the large ones none".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def class_audit(image_features: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor,
                added_weights: torch.Tensor, classes: Sequence[str], added: Sequence[str],
                groups: Sequence[str] | None = None) -> dict[str, Any]:
    """``class_weights`` [C, D] and ``added_weights`` [A, D]: zero-shot classifiers (normalised
    rows) of the label set and of the candidate classes; ``groups``: one group name per image.

    Returns accuracies before and after, ``absorbed`` (true class -> added class -> count) and, with
    ``groups``, per group its size, accuracies and absorption, and the chi-square test over the
    table groups x (each added class, not absorbed)."""
    base = (image_features @ class_weights.T).argmax(1)
    ext = (image_features @ torch.cat([class_weights, added_weights]).T).argmax(1)
    n_cls = len(classes)
    took = ext >= n_cls  # taken by an added class
    out: dict[str, Any] = {
        "n_images": len(targets), "acc1_before": float((base == targets).float().mean()),
        "acc1_after": float((ext == targets).float().mean()), "absorbed_fraction": float(took.float().mean()),
        "absorbed": {classes[c]: {added[a]: int(((targets == c) & (ext == n_cls + a)).sum()) for a in range(len(added))}
                     for c in range(n_cls) if (targets == c).any()},
    }
    if groups is None:
        return out
    if len(groups) != len(targets):
        raise ValueError(f"{len(groups)} group values for {len(targets)} images")
    names = sorted(set(groups))
    g = torch.tensor([names.index(x) for x in groups])
    per = {}
    table = []
    for i, name in enumerate(names):
        m = g == i
        counts = [int((ext[m] == n_cls + a).sum()) for a in range(len(added))]
        per[name] = {"n": int(m.sum()), "acc1_before": float((base[m] == targets[m]).float().mean()),
                     "acc1_after": float((ext[m] == targets[m]).float().mean()),
                     "absorbed_fraction": float(took[m].float().mean()), "absorbed": dict(zip(added, counts))}
        table.append(counts + [int(m.sum()) - sum(counts)])
    out["groups"] = per
    out["chi_square"] = independence_test(table)
    return out


def independence_test(table: list[list[int]]) -> dict[str, Any]:
    """Pearson's chi-square test of independence on a count table (rows: groups), after dropping
    empty columns; ``p_value`` is None (with ``why``) when the table cannot test anything."""
    from scipy.stats import chi2_contingency

    cols = [j for j in range(len(table[0])) if any(row[j] for row in table)]
    rows = [[row[j] for j in cols] for row in table if any(row[j] for j in cols)]
    if len(rows) < 2 or len(cols) < 2:
        return {"chi2": None, "dof": 0, "p_value": None,
                "why": "fewer than two groups, or no image absorbed by any added class"}
    res = chi2_contingency(rows, correction=False)
    return {"chi2": float(res.statistic), "dof": int(res.dof), "p_value": float(res.pvalue)}


def audit_markdown(result: dict[str, Any], title: str, group_column: str | None) -> str:
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    lines = [f"# Class-design audit: {title}", "",
             f"{result['n_images']} images. acc1 {pct(result['acc1_before'])}% with the label set as given, "
             f"{pct(result['acc1_after'])}% with the added classes, which take {pct(result['absorbed_fraction'])}% "
             "of the images.", ""]
    if "groups" in result:
        added = list(next(iter(result["groups"].values()))["absorbed"])
        lines += [f"| {group_column} | images | acc1 before % | acc1 after % | absorbed % | "
                  + " | ".join(f"`{a}`" for a in added) + " |", "|" + "---|" * (5 + len(added))]
        for name, r in result["groups"].items():
            lines.append(f"| {name} | {r['n']} | {pct(r['acc1_before'])} | {pct(r['acc1_after'])} | "
                         f"{pct(r['absorbed_fraction'])} | " + " | ".join(str(r["absorbed"][a]) for a in added) + " |")
        c = result["chi_square"]
        lines += ["", f"Chi-square test of independence between {group_column} and absorption: " +
                  (f"chi2 = {c['chi2']:.2f}, dof = {c['dof']}, p = {c['p_value']:.3g}." if c["p_value"] is not None
                   else f"not computed ({c['why']}).")]
    worst = sorted(result["absorbed"].items(), key=lambda kv: -sum(kv[1].values()))[:10]
    lines += ["", "Classes that lose the most images to the added classes:", "", "| true class | taken |", "|---|---|"]
    lines += [f"| {c} | " + ", ".join(f"{a}: {n}" for a, n in d.items() if n) + " |"
              for c, d in worst if sum(d.values())]
    return "\n".join(lines) + "\n"


def audit_plot(result: dict[str, Any], path: str | Path, title: str, group_column: str) -> None:
    """Per group, the share of its images each added class takes (stacked bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = result["groups"]
    names = list(groups)
    added = list(next(iter(groups.values()))["absorbed"])
    fig, ax = plt.subplots(figsize=(max(4.5, 0.8 * len(names) + 2), 3.6))
    bottom = [0.0] * len(names)
    for a in added:
        vals = [100 * groups[n]["absorbed"][a] / max(1, groups[n]["n"]) for n in names]
        ax.bar(names, vals, bottom=bottom, label=a)
        bottom = [b + v for b, v in zip(bottom, vals)]
    c = result["chi_square"]
    note = f"chi-square p = {c['p_value']:.3g}" if c["p_value"] is not None else "no test"
    ax.set(ylabel="images taken by added classes (%)", xlabel=group_column, title=f"{title}\n{note}")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
