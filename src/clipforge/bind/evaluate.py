"""What emerges when modalities are bound to images only (ImageBind, Girdhar et al. 2023, sections
4.2-4.4), as pure functions over embeddings plus the readers that make them:

* **emergent zero-shot**: files of a modality classified by text prompts through the text tower,
  though the encoder never saw text; per-attribute accuracy when the labels are "colour shape";
* **emergent retrieval**: between two modalities never paired with each other (speech <-> depth),
  and text -> modality, recall@k;
* **embedding arithmetic**: unit(a) + unit(b) retrieves images with a's and b's contents (an image
  of a red circle + the spoken word "star" -> red stars), a hit rate over a query set;
* **decoder re-use**: a decoder built on text embeddings only (nearest caption of a caption bank)
  applied to a modality's embeddings, scored by the attributes its captions name.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from clipforge.bind.data import ModalityFiles, collate_modality
from clipforge.data.pairs import Skipped
from clipforge.errors import DataError
from clipforge.evaluation.retrieval import retrieval_metrics
from clipforge.evaluation.zero_shot import classification_metrics


@dataclass
class Embedded:
    """Unit embeddings of a column's files, zero rows where a file was skipped (``ok`` False)."""

    features: torch.Tensor  # [N, D]
    ok: torch.Tensor  # [N] bool
    skipped: list[Skipped]
    notes: Counter


def read_table(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such CSV file")
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), [dict(r) for r in reader]


def column_paths(path: str | Path, rows: list[dict[str, str]], column: str) -> list[str]:
    base = Path(path).parent
    return [str(p if (p := Path((r.get(column) or "").strip())).is_absolute() else base / p) if r.get(column) else ""
            for r in rows]


@torch.no_grad()
def embed_modality(model: Any, modality: str, items: list[str], batch_size: int = 128,
                   progress: bool = False) -> Embedded:
    """Unit embeddings of ``items`` (file paths, or texts for ``text``) by the bound model."""
    from clipforge.evaluation.cache import image_features
    from clipforge.evaluation.embed import embed_texts
    from clipforge.utils.progress import progress_bar

    n, dim = len(items), model.config.embed_dim
    out, ok = torch.zeros(n, dim), torch.zeros(n, dtype=torch.bool)
    if modality == "text":
        keep = [i for i, t in enumerate(items) if t.strip()]
        out[keep] = embed_texts(model.clip, [items[i] for i in keep])
        ok[keep] = True
        return Embedded(out, ok, [Skipped("empty text", str(i)) for i in range(n) if not ok[i]], Counter())
    if modality == "image":
        feats, idx, skipped = image_features(model.clip, items, progress=progress, label="embed images")
        out[idx], ok[idx] = feats, True
        return Embedded(out, ok, skipped, Counter())
    device = next(model.parameters()).device
    model.eval()
    loader = DataLoader(ModalityFiles(items, model.inputs[modality] if modality in model.inputs else
                                      _missing(model, modality)), batch_size=batch_size, collate_fn=collate_modality)
    skipped, notes = [], Counter()
    with progress_bar(f"embed {modality}", total=len(loader), enabled=progress) as bar:
        for batch in loader:
            skipped += batch.skipped
            notes.update(batch.notes)
            if len(batch):
                out[batch.indices] = model.encode(modality, batch.inputs.to(device), normalize=True).float().cpu()
                ok[batch.indices] = True
            bar.advance()
    return Embedded(out, ok, skipped, notes)


def _missing(model: Any, modality: str) -> Any:
    from clipforge.errors import ConfigError

    raise ConfigError(f"the model has no {modality!r} encoder (it binds: {', '.join(model.modalities) or 'nothing'})")


def zero_shot(features: torch.Tensor, labels: list[str], classes: list[str], class_weights: torch.Tensor,
              attributes: tuple[str, ...] = ()) -> dict[str, float]:
    """Top-1/5 accuracy of ``features`` [N, D] against ``class_weights`` [C, D] (the text tower's
    prompt ensembles), plus, for labels of ``len(attributes)`` words, each word's accuracy
    (``colour_acc``: the predicted class's first word is the label's)."""
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({lab for lab in labels if lab not in index})
    if unknown:
        raise DataError(f"labels not among the classes: {', '.join(unknown[:5])}")
    targets = torch.tensor([index[lab] for lab in labels])
    logits = features @ class_weights.T
    out = classification_metrics(logits, targets)
    out["chance"] = 1.0 / len(classes)
    if attributes:
        pred = [classes[i].split() for i in logits.argmax(dim=1).tolist()]
        true = [lab.split() for lab in labels]
        for k, name in enumerate(attributes):
            if all(len(p) == len(attributes) for p in pred) and all(len(t) == len(attributes) for t in true):
                out[f"{name}_acc"] = sum(p[k] == t[k] for p, t in zip(pred, true)) / len(true)
                values = {c.split()[k] for c in classes}
                out[f"{name}_chance"] = 1.0 / len(values)
    return out


def cross_retrieval(a: Embedded, b: Embedded, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k of row i's ``b`` given row i's ``a`` (``a_to_b``) and the reverse, over rows both have."""
    both = a.ok & b.ok
    if int(both.sum()) < 2:
        raise DataError("fewer than 2 rows have both modalities")
    m = retrieval_metrics(b.features[both], a.features[both], torch.arange(int(both.sum())), ks)
    out = {f"a_to_b_recall@{k}": m[f"image_retrieval_recall@{k}"] for k in ks}
    out.update({f"b_to_a_recall@{k}": m[f"text_retrieval_recall@{k}"] for k in ks})
    out["rows"] = float(both.sum())
    out["chance@1"] = 1.0 / float(both.sum())
    return out


def arithmetic(query_a: torch.Tensor, query_b: torch.Tensor, gallery: torch.Tensor, hits: torch.Tensor,
               exclude: torch.Tensor | None = None, k: int = 5) -> dict[str, float]:
    """unit(a) + unit(b) against a gallery [G, D]; ``hits`` [Q, G] marks the gallery items that have
    both contents; ``exclude`` [Q] a gallery item each query may not return (its own image).
    ``hit@1``: the first result is a hit; ``precision@k``: the share of hits in the top k. The same for
    ``a`` alone and ``b`` alone, the baselines a sum must beat."""
    out = {}
    for name, q in (("sum", F.normalize(F.normalize(query_a, dim=-1) + F.normalize(query_b, dim=-1), dim=-1)),
                    ("a_only", F.normalize(query_a, dim=-1)), ("b_only", F.normalize(query_b, dim=-1))):
        sims = q @ gallery.T
        if exclude is not None:
            sims[torch.arange(len(q)), exclude] = -float("inf")
        top = sims.topk(k, dim=1).indices
        got = hits.gather(1, top).float()
        out[f"{name}/hit@1"] = float(got[:, 0].mean())
        out[f"{name}/precision@{k}"] = float(got.mean())
    out["queries"] = float(len(query_a))
    return out


def nearest_caption(features: torch.Tensor, bank: torch.Tensor, captions: list[str]) -> list[str]:
    """The caption of ``bank`` (unit text embeddings) nearest to each feature: the decoder built from
    text alone."""
    return [captions[i] for i in (features @ bank.T).argmax(dim=1).tolist()]


def caption_attributes(captions: list[str], labels: list[str], vocab: dict[str, set[str]]) -> dict[str, float]:
    """Share of captions whose first object's attribute words are the label's (``vocab``: attribute ->
    its words, e.g. colour -> {red, ...}); a caption is read word by word, first match per attribute."""
    out = {}
    for name, words in vocab.items():
        right = 0
        for cap, lab in zip(captions, labels):
            said = next((w for w in cap.replace(",", " ").split() if w in words), None)
            right += said is not None and said in lab.split()
        out[f"{name}_acc"] = right / max(1, len(labels))
    both = 0
    for cap, lab in zip(captions, labels):
        firsts = [next((w for w in cap.replace(",", " ").split() if w in words), None) for words in vocab.values()]
        both += all(f is not None and f in lab.split() for f in firsts)
    out["all_acc"] = both / max(1, len(labels))
    return out


def write_report(out_dir: str | Path, results: dict[str, Any]) -> Path:
    """``bind_eval.json``, a Markdown summary (``bind_eval.md``) and a chart (``bind_eval.png``),
    written atomically."""
    from clipforge.io import atomic_file, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(results, indent=2), out / "bind_eval.json")
    atomic_write_text(summary_markdown(results), out / "bind_eval.md")
    if results.get("zero_shot") or results.get("retrieval"):
        with atomic_file(out / "bind_eval.png") as tmp:
            summary_chart(results, tmp)
    return out / "bind_eval.json"


def summary_chart(results: dict[str, Any], path: str | Path) -> None:
    """Zero-shot accuracy per input and attribute against chance, and retrieval R@1 per direction
    against chance, as bars (a PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    zs, ret = results.get("zero_shot", {}), results.get("retrieval", {})
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    ax = axes[0]
    keys = list(zs)
    metrics = [("acc1", "class"), ("colour_acc", "colour"), ("shape_acc", "shape")]
    width = 0.8 / len(metrics)
    for j, (metric, label) in enumerate(metrics):
        xs = [i + (j - 1) * width for i in range(len(keys))]
        ax.bar(xs, [100 * zs[k].get(metric, 0.0) for k in keys], width, label=label)
    if keys:
        ax.axhline(100 * zs[keys[0]]["chance"], color="k", ls=":", lw=1, label="chance (class)")
        if "colour_chance" in zs[keys[0]]:
            ax.axhline(100 * zs[keys[0]]["colour_chance"], color="grey", ls="--", lw=1, label="chance (attribute)")
    ax.set_xticks(range(len(keys)), [k.replace("/zeroshot_", "\n") for k in keys], fontsize=8)
    ax.set_ylabel("zero-shot accuracy by text prompts (%)")
    ax.set_ylim(0, 118)  # room for the legend above the bars
    ax.set_yticks(range(0, 101, 20))
    ax.legend(fontsize=8, loc="upper center", ncol=5)
    ax.set_title("emergent zero-shot")
    ax = axes[1]
    rows = [(f"{a}->{b}", m[f"{d}_recall@1"], m["chance@1"]) for key, m in ret.items()
            for a, b, d in ((key.split("-")[0], key.split("-")[1], "a_to_b"), (key.split("-")[1], key.split("-")[0],
                                                                               "b_to_a"))]
    ax.barh(range(len(rows)), [100 * r[1] for r in rows], color="tab:purple")
    if rows:
        ax.axvline(100 * rows[0][2], color="k", ls=":", lw=1, label="chance")
        ax.legend(fontsize=8, loc="lower right")
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("recall@1 (%)")
    ax.set_xlim(0, 100)
    ax.set_title("retrieval between modalities")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)


def summary_markdown(results: dict[str, Any]) -> str:
    lines = [f"# What emerges in {results.get('model', 'the bound model')}", ""]
    zs = results.get("zero_shot", {})
    if zs:
        lines += ["## Emergent zero-shot (text prompts; the encoder never saw text)", "",
                  "| modality | set | top-1 | chance | colour | shape |", "|---|---|---|---|---|---|"]
        for key, m in zs.items():
            mod, split = key.split("/", 1)
            lines.append(f"| {mod} | {split} | {100 * m['acc1']:.1f}% | {100 * m['chance']:.1f}% | "
                         f"{_pct(m.get('colour_acc'))} | {_pct(m.get('shape_acc'))} |")
        lines.append("")
    ret = results.get("retrieval", {})
    if ret:
        lines += ["## Emergent retrieval (recall@1 / @5 / @10)", "",
                  "| query -> gallery | R@1 | R@5 | R@10 | chance@1 |", "|---|---|---|---|---|"]
        for key, m in ret.items():
            a, b = key.split("-")
            for src, dst, d in ((a, b, "a_to_b"), (b, a, "b_to_a")):
                lines.append(f"| {src} -> {dst} | {_pct(m[f'{d}_recall@1'])} | {_pct(m[f'{d}_recall@5'])} | "
                             f"{_pct(m[f'{d}_recall@10'])} | {_pct(m['chance@1'])} |")
        lines.append("")
    ar = results.get("arithmetic", {})
    if ar:
        lines += ["## Embedding arithmetic (hit@1: the first image has both contents)", "",
                  "| query | a + b | a alone | b alone | queries |", "|---|---|---|---|---|"]
        for key, m in ar.items():
            lines.append(f"| {key} | {_pct(m['sum/hit@1'])} | {_pct(m['a_only/hit@1'])} | {_pct(m['b_only/hit@1'])} | "
                         f"{int(m['queries'])} |")
        lines.append("")
    for name, title in (("decoder", "A text-only decoder re-used (nearest caption of the captions' text embeddings)"),
                        ("captioner", "A captioner trained on text embeddings only, re-used")):
        dec = {k: v for k, v in results.get(name, {}).items() if isinstance(v, dict)}
        if not dec:
            continue
        source = f" ({results[name]['path']})" if "path" in results[name] else ""
        lines += [f"## {title}{source}: attributes its captions name right", "",
                  "| input | set | colour | shape | both | example (label: caption) |", "|---|---|---|---|---|---|"]
        for key, m in dec.items():
            mod, split = key.split("/", 1)
            ex = m.get("examples", [{}])[0]
            lines.append(f"| {mod} | {split} | {_pct(m.get('colour_acc'))} | {_pct(m.get('shape_acc'))} | "
                         f"{_pct(m.get('all_acc'))} | {ex.get('label', '')}: {ex.get('caption', '')} |")
        lines.append("")
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"
