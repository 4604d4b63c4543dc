"""The demo's report: training curves, similarity matrix, retrievals, zero-shot results, and the
captions a captioner reading the CLIP writes for the images shown."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from clipforge.data.datasets import load_classification, load_retrieval
from clipforge.engine.checkpoint import TrainState
from clipforge.evaluation import embed_texts
from clipforge.evaluation.cache import image_features
from clipforge.evaluation.tasks import retrieval_task, zero_shot_task
from clipforge.models.clip import CLIP
from clipforge.report.html import figure_tag, image_tag, page, table


def curves_figure(state: TrainState) -> plt.Figure:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    steps = [h["step"] for h in state.history]
    axes[0].plot(steps, [h["loss"] for h in state.history])
    axes[0].set(title="training loss", xlabel="step", ylabel="contrastive loss")
    axes[1].plot(steps, [h["temperature"] for h in state.history], color="C2")
    axes[1].set(title="temperature", xlabel="step")
    if state.evals:
        epochs = [e["epoch"] for e in state.evals]
        for key, label in (("seen/acc1", "zero-shot, seen combos"), ("heldout/acc1", "zero-shot, held-out combos"),
                           ("val/image_retrieval_recall@1", "text->image R@1"),
                           ("val/text_retrieval_recall@1", "image->text R@1")):
            if key in state.evals[0]:
                axes[2].plot(epochs, [e[key] for e in state.evals], marker="o", label=label)
        axes[2].set(title="evaluation", xlabel="epoch", ylim=(0, 1))
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    return fig


def similarity_figure(sims: np.ndarray, captions: list[str]) -> plt.Figure:
    n = len(captions)
    fig, ax = plt.subplots(figsize=(0.55 * n + 4, 0.45 * n + 1))
    im = ax.imshow(sims, cmap="viridis")
    ax.set_yticks(range(n), [c[:48] for c in captions], fontsize=7)
    ax.set_xticks(range(n), [str(i) for i in range(n)], fontsize=7)
    ax.set_xlabel("image")
    ax.set_title("cosine similarity: captions (rows) vs images (columns); the diagonal pairs match")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{sims[i, j]:.2f}", ha="center", va="center", fontsize=5.5,
                    color="white" if sims[i, j] < sims.max() * 0.7 else "black")
    fig.colorbar(im, ax=ax, fraction=0.03)
    return fig


def confusion_figure(preds: torch.Tensor, targets: torch.Tensor, classes: list[str], subset: list[str]) -> plt.Figure:
    idx = [classes.index(c) for c in subset]
    mat = np.zeros((len(idx), len(classes)))
    for p, t in zip(preds.tolist(), targets.tolist()):
        if t in idx:
            mat[idx.index(t), p] += 1
    cols = sorted(set(np.nonzero(mat.sum(0))[0].tolist()) | set(idx))
    fig, ax = plt.subplots(figsize=(0.35 * len(cols) + 3, 0.35 * len(idx) + 1.5))
    ax.imshow(mat[:, cols], cmap="Blues")
    ax.set_yticks(range(len(idx)), subset, fontsize=7)
    ax.set_xticks(range(len(cols)), [classes[c] for c in cols], rotation=90, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title="held-out combinations: what the model predicts")
    return fig


def _captions(captioner: Any, features: torch.Tensor) -> list[str]:
    """The captioner's beam-search captions of CLIP image ``features`` (computed once for the report)."""
    from clipforge.models.generation import GenerationConfig
    from clipforge.tokenizer.ids import ids_to_text

    cfg = captioner.config
    with torch.no_grad():
        ids = captioner.generate_from_embeddings(features, GenerationConfig(strategy="beam", num_beams=4))
    return [ids_to_text(captioner.tokenizer, row, cfg.start_id, cfg.end_id, cfg.pad_id) for row in ids.tolist()]


def build_demo_report(model: CLIP, data_dir: Path, state: TrainState, out_dir: Path, templates: list[str],
                      command: str, captioner: Any = None, captioner_path: str = "CAPTIONER") -> dict[str, Any]:
    """Write ``out_dir/index.html`` and ``out_dir/results.json``; return the headline numbers.
    ``captioner``: a prefix captioner reading ``model``; its captions go under the images shown."""
    model.eval()
    meta = json.loads((data_dir / "meta.json").read_text())
    classes, heldout = meta["classes"], meta["heldout_combinations"]
    results: dict[str, Any] = {}
    parts = []
    zs_rows = []
    conf_html = ""
    for split in ("seen", "heldout"):
        ds = load_classification(str(data_dir / f"zeroshot_{split}.csv"), classes=classes)
        m, logits, targets, _ = zero_shot_task(model, ds, templates)
        preds = logits.argmax(1)
        shape_ok = [classes[p].split()[1] == classes[t].split()[1] for p, t in zip(preds.tolist(), targets.tolist())]
        colour_ok = [classes[p].split()[0] == classes[t].split()[0] for p, t in zip(preds.tolist(), targets.tolist())]
        m["shape_acc"] = float(np.mean(shape_ok))
        m["colour_acc"] = float(np.mean(colour_ok))
        results[f"zeroshot_{split}"] = m
        zs_rows.append([f"{split} combinations", len(targets), m["acc1"], m["acc5"], m["mean_per_class_recall"],
                        m["shape_acc"], m["colour_acc"]])
        if split == "heldout":
            conf_html = figure_tag(confusion_figure(preds, targets, classes, heldout), "held-out confusion")

    # The validation images are embedded once: for retrieval, the similarity matrix and the searches.
    val = load_retrieval(str(data_dir / "val.csv"))
    val_features = image_features(model, val.images, use_cache=False, progress=False)
    all_f, all_idx, _ = val_features
    results["retrieval_val"], _, _ = retrieval_task(model, val, features=val_features)
    caption_of: dict[int, str] = {}
    for caption, image in zip(val.captions, val.text_to_image):
        caption_of.setdefault(image, caption)

    r = results
    headline = (f"Zero-shot accuracy over all {len(classes)} (colour, shape) classes: "
                f"<b>{r['zeroshot_heldout']['acc1']:.1%}</b> on combinations never seen in training, "
                f"<b>{r['zeroshot_seen']['acc1']:.1%}</b> on seen ones (chance {1 / len(classes):.1%}). "
                f"Validation retrieval R@1: text->image <b>{r['retrieval_val']['image_retrieval_recall@1']:.1%}</b>, "
                f"image->text <b>{r['retrieval_val']['text_retrieval_recall@1']:.1%}</b>.")
    parts.append(f'<p class="headline">{headline}</p>')
    parts.append(f"<p class='muted'>Reproduce: <code>{html.escape(command)}</code>. "
                 f"{state.step} steps, {state.samples_seen} samples seen.</p>")
    parts.append("<h2>Training</h2>" + figure_tag(curves_figure(state), "training curves"))
    parts.append("<h2>Zero-shot classification</h2>")
    parts.append(table(["split", "images", "acc1", "acc5", "mean per-class recall", "shape correct",
                        "colour correct"], zs_rows))
    parts.append(f"<p>Held-out combinations (never in a training caption or image): {', '.join(heldout)}. "
                 f"Prompts: {', '.join(html.escape(t) for t in templates)}.</p>")
    parts.append(conf_html)
    ret = results["retrieval_val"]
    parts.append("<h2>Retrieval on the validation scenes</h2>")
    parts.append(table(["direction", "R@1", "R@5", "R@10", "median rank"], [
        ["text -> image", ret["image_retrieval_recall@1"], ret["image_retrieval_recall@5"],
         ret["image_retrieval_recall@10"], int(ret["image_retrieval_median_rank"])],
        ["image -> text", ret["text_retrieval_recall@1"], ret["text_retrieval_recall@5"],
         ret["text_retrieval_recall@10"], int(ret["text_retrieval_median_rank"])]]))

    # Generated captions of every image the report shows (the batch and the search results).
    queries = ["a red circle", "a large blue square", "a green star and a yellow triangle", "a purple ring",
               "an orange cross in the top left"] + [f"{'an' if h[0] in 'aeiou' else 'a'} {h}" for h in heldout[:3]]
    q_f = embed_texts(model, queries)
    hits_of = [(all_f @ qf).topk(min(6, len(all_f))).indices.tolist() for qf in q_f]
    shown = sorted(set(range(min(12, len(all_f)))) | {t for hits in hits_of for t in hits})
    generated: dict[int, str] = {}
    if captioner is not None:
        generated = dict(zip(shown, _captions(captioner, all_f[shown])))
        results["captions"] = [{"image": val.images[int(all_idx[t])], "reference": caption_of[int(all_idx[t])],
                                "generated": generated[t]} for t in shown[:12]]

    def under(t: int, text: str) -> str:  # a thumbnail's text: the reference caption, and the generated one
        gen = f"<br><i>&#9998; {html.escape(generated[t])}</i>" if t in generated else ""
        return f"{html.escape(text)}{gen}"

    batch = [(val.images[i], caption_of[i]) for i in all_idx[:12].tolist()]
    txt_f = embed_texts(model, [caption for _, caption in batch])
    sims = (txt_f @ all_f[:12].T).numpy()
    parts.append("<h2>Similarity matrix of a validation batch</h2>")
    if generated:
        parts.append("<p class='muted'>Under each image: its reference caption and, in italics after &#9998;, the "
                     "caption a ClipCap captioner trained on this CLIP's embeddings writes for it "
                     f"(<code>clipforge caption --model {html.escape(captioner_path)} IMAGE</code>).</p>")
    parts.append('<div class="grid">' + "".join(
        f'<div class="card">{image_tag(path, caption)}<br>{i}: {under(i, caption)}</div>'
        for i, (path, caption) in enumerate(batch)) + "</div>")
    parts.append(figure_tag(similarity_figure(sims, [caption for _, caption in batch]), "similarity matrix"))

    parts.append("<h2>Text -> image search over the validation scenes</h2>")
    for q, top in zip(queries, hits_of):
        hits = [(t, val.images[int(all_idx[t])], caption_of[int(all_idx[t])]) for t in top]
        cards = "".join(f'<div class="card">{image_tag(path, caption)}<br>{under(t, caption[:40])}</div>'
                        for t, path, caption in hits)
        parts.append(f"<p><b>{html.escape(q)}</b></p><div class='grid'>{cards}</div>")

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "index.html").write_text(page("clipforge demo: CLIP on synthetic scenes", "\n".join(parts)))
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results
