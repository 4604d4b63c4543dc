"""``clipforge bind eval``: every measurement of :mod:`clipforge.bind.evaluate` run over a dataset
laid out as ``clipforge data synth --modalities ...`` writes it (or the user's CSVs in that shape)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clipforge.bind.evaluate import (
    Embedded,
    arithmetic,
    caption_attributes,
    column_paths,
    cross_retrieval,
    embed_modality,
    nearest_caption,
    read_table,
    zero_shot,
)
from clipforge.errors import DataError

log = logging.getLogger(__name__)
SYNTHETIC = "clipforge-synthetic-scenes"


@dataclass
class EvalData:
    """The CSVs to measure on; any may be missing (its measurement is left out)."""

    zeroshot: list[str] = field(default_factory=list)  # labelled: label + modality columns (+ image)
    retrieval: str | None = None  # rows with several modality columns (+ image, caption)
    words: str | None = None  # word,kind,speech: spoken words for arithmetic
    captions: str | None = None  # a caption column: the text-only decoder's bank
    classes: list[str] = field(default_factory=list)  # default: the dataset's (meta.json) or the labels
    templates: list[str] = field(default_factory=lambda: ["{c}"])
    attributes: tuple[str, ...] = ()  # names of the label's words ("colour", "shape")
    captioner: str | None = None  # a captioner trained on the CLIP's text embeddings only (capdec, decap)


def synthetic_layout(folder: str | Path) -> EvalData:
    """The evaluation files of a ``clipforge data synth`` folder."""
    from clipforge.evaluation.templates import get_templates

    root = Path(folder)
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise DataError(f"{root}: no meta.json (a folder written by clipforge data synth); give the CSVs instead")
    meta = json.loads(meta_path.read_text())
    if not meta.get("modalities"):
        raise DataError(f"{root}: written without modalities; make it with clipforge data synth OUT "
                        "--modalities speech,depth")
    words = root / "speech_words.csv"
    return EvalData(zeroshot=[str(root / "zeroshot_seen.csv"), str(root / "zeroshot_heldout.csv")],
                    retrieval=str(root / "val.csv"), words=str(words) if words.is_file() else None,
                    captions=str(root / "train.csv"), classes=list(meta["classes"]),
                    templates=get_templates("synthetic"), attributes=("colour", "shape"))


def _name(path: str) -> str:
    return Path(path).stem


def measure(model: Any, data: EvalData, progress: bool = True, arithmetic_queries: int = 256,
            seed: int = 0) -> dict[str, Any]:
    from clipforge.evaluation.zero_shot import zero_shot_classifier

    mods = list(model.modalities)
    results: dict[str, Any] = {"modalities": mods, "paired_with": {m: model.config.modalities[m].paired_with
                                                                   for m in mods}}
    cache: dict[tuple[str, str], Embedded] = {}

    def embedded(csv_path: str, rows: list[dict[str, str]], modality: str) -> Embedded:
        key = (csv_path, modality)
        if key not in cache:
            items = [r.get("caption", "") for r in rows] if modality == "text" else \
                column_paths(csv_path, rows, modality)
            cache[key] = embed_modality(model, modality, items, progress=progress)
            if cache[key].skipped:
                log.warning(f"{csv_path}: {len(cache[key].skipped)} {modality} files skipped "
                            f"(e.g. {cache[key].skipped[0].detail or cache[key].skipped[0].reason})")
        return cache[key]

    tables = {p: read_table(p) for p in [*data.zeroshot, *filter(None, [data.retrieval])]}
    classes = data.classes or sorted({r["label"] for p in data.zeroshot for r in tables[p][1] if r.get("label")})
    weights = zero_shot_classifier(model.clip, classes, data.templates) if data.zeroshot else None

    results["zero_shot"] = {}
    for path in data.zeroshot:
        columns, rows = tables[path]
        if "label" not in columns:
            raise DataError(f"{path}: no label column (zero-shot needs one)")
        for mod in ["image", *mods]:
            if mod != "image" and mod not in columns or mod == "image" and "image" not in columns:
                continue
            e = embedded(path, rows, mod)
            keep = e.ok.nonzero().flatten().tolist()
            results["zero_shot"][f"{mod}/{_name(path)}"] = zero_shot(
                e.features[keep], [rows[i]["label"] for i in keep], classes, weights, data.attributes)

    if data.retrieval:
        columns, rows = tables[data.retrieval]
        present = [m for m in ["text", "image", *mods] if m in columns or m == "text" and "caption" in columns]
        results["retrieval"] = {}
        for i, a in enumerate(present):
            for b in present[i + 1:]:
                if a in ("text", "image") and b in ("text", "image"):
                    continue  # the CLIP's own retrieval is clipforge eval retrieval's
                results["retrieval"][f"{a}-{b}"] = cross_retrieval(embedded(data.retrieval, rows, a),
                                                                  embedded(data.retrieval, rows, b))

    if data.words and data.zeroshot and data.attributes:
        results["arithmetic"] = _arithmetic(model, data, tables, embedded, mods, arithmetic_queries, seed)

    if data.captions and data.zeroshot and data.attributes:
        _, cap_rows = read_table(data.captions)
        bank_text = sorted({r["caption"] for r in cap_rows if r.get("caption")})
        bank = embed_modality(model, "text", bank_text).features
        vocab = {name: {c.split()[k] for c in classes} for k, name in enumerate(data.attributes)}
        decoders = {"decoder": lambda f: nearest_caption(f, bank, bank_text)}
        if data.captioner:
            decoders["captioner"] = captioner_decoder(data.captioner, model)
            results["captioner"] = {"path": data.captioner}
        for name, decode in decoders.items():
            results.setdefault(name, {})
            for path in data.zeroshot:
                columns, rows = tables[path]
                for mod in [m for m in ["image", *mods] if m in columns]:
                    e = embedded(path, rows, mod)
                    keep = e.ok.nonzero().flatten().tolist()
                    caps = decode(e.features[keep])
                    results[name][f"{mod}/{_name(path)}"] = {
                        **caption_attributes(caps, [rows[i]["label"] for i in keep], vocab),
                        "examples": [{"label": rows[i]["label"], "caption": c} for i, c in list(zip(keep, caps))[:5]]}
    return results


def captioner_decoder(path: str, model: Any) -> Any:
    """``features -> captions`` by a captioner that reads this bound model's CLIP space (``clipforge
    caption train --method capdec|decap``: trained on text embeddings alone), greedy decoding."""
    from clipforge.checkpoints import load
    from clipforge.errors import CheckpointError
    from clipforge.evaluation.cache import model_fingerprint
    from clipforge.models.generation import GenerationConfig
    from clipforge.tokenizer.ids import ids_to_text

    captioner = load(path)
    if not hasattr(captioner, "generate_from_embeddings") or captioner.tokenizer is None:
        raise CheckpointError(f"{path}: not a captioner of CLIP embeddings (clipforge caption train writes one)")
    wanted = getattr(captioner.config, "clip_fingerprint", "")
    if wanted and wanted != model_fingerprint(model.clip):
        raise CheckpointError(f"{path} reads another CLIP's embeddings than this bound model's")
    cfg = captioner.config

    @torch.no_grad()
    def decode(features: torch.Tensor) -> list[str]:
        out = []
        for chunk in features.split(256):
            ids = captioner.generate_from_embeddings(chunk, GenerationConfig(strategy="greedy"))
            out += [ids_to_text(captioner.tokenizer, row, cfg.start_id, cfg.end_id, cfg.pad_id) for row in ids.tolist()]
        return out
    return decode


def _arithmetic(model: Any, data: EvalData, tables: dict, embedded: Any, mods: list[str], n_queries: int,
                seed: int) -> dict[str, Any]:
    """Queries over the first zero-shot set (seen combinations): its images are the gallery."""
    path = data.zeroshot[0]
    columns, rows = tables[path]
    _, word_rows = read_table(data.words)  # type: ignore[arg-type]
    labels = [r["label"] for r in rows]
    gallery = embedded(path, rows, "image")
    present = set(labels)
    g = torch.Generator().manual_seed(seed)
    by_kind: dict[str, list[int]] = {}  # word kind -> rows of the word file
    for j, r in enumerate(word_rows):
        by_kind.setdefault(r["kind"], []).append(j)
    word_emb = {"text": embed_modality(model, "text", [r["word"] for r in word_rows])}
    if "speech" in mods:
        word_emb = {"spoken": embed_modality(model, "speech", column_paths(data.words, word_rows, "speech")),  # type: ignore[arg-type]
                    **word_emb}
    out: dict[str, Any] = {}
    # (query modality a, the attribute the word b replaces)
    plans = [("image", "shape"), ("image", "colour")] + ([("depth", "colour")] if "depth" in mods else [])
    for a_mod, attr in plans:
        if a_mod != "image" and a_mod not in columns:
            continue
        a_emb = embedded(path, rows, a_mod)
        k = data.attributes.index(attr)
        candidates = [i for i in range(len(rows)) if a_emb.ok[i] and gallery.ok[i]]
        order = torch.randperm(len(candidates), generator=g).tolist()[:n_queries]
        for source, emb in word_emb.items():
            qa, qb, hits, excl = [], [], [], []
            for j in order:
                i = candidates[j]
                words = labels[i].split()
                options = [w for w in by_kind.get(attr, []) if word_rows[w]["word"] != words[k]
                           and _swapped(words, k, word_rows[w]["word"]) in present and emb.ok[w]]
                if not options:
                    continue
                w = options[int(torch.randint(len(options), (1,), generator=g))]
                qa.append(a_emb.features[i])
                qb.append(emb.features[w])
                want = _swapped(words, k, word_rows[w]["word"])
                hits.append(torch.tensor([lab == want for lab in labels]) & gallery.ok)
                excl.append(i)
            if not qa:
                continue
            out[f"{a_mod} + {source} {attr}"] = arithmetic(torch.stack(qa), torch.stack(qb), gallery.features,
                                                         torch.stack(hits), torch.tensor(excl))
    return out


def _swapped(words: list[str], k: int, word: str) -> str:
    """The label ``words`` with its ``k``-th word replaced by ``word``."""
    return " ".join(word if m == k else w for m, w in enumerate(words))
