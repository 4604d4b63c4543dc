"""Caption metrics: COCO's (BLEU-1..4, ROUGE-L, CIDEr-D), CLIP-score with a separate judge, and
attribute accuracy on the synthetic scenes. Pure functions over captions and embeddings.

* BLEU (Papineni et al. 2002), ROUGE-L (Lin 2004) and CIDEr-D (Vedantam et al. 2015) are
  pycocoevalcap's scorers, the implementation COCO's leaderboard and the captioning papers use,
  on captions tokenised as COCO tokenises them: Stanford's PTBTokenizer (lower-cased, punctuation
  dropped; pycocoevalcap ships the jar, it needs ``java``). Without Java an equivalent Python
  tokenisation is used and the result says so. Scores are on pycocoevalcap's scale (CIDEr-D 1.131 is
  the 113.1 papers print).
* CLIP-S = 2.5 * max(cos(image, caption), 0) and RefCLIP-S = harmonic mean of CLIP-S and
  max(max_ref cos(caption, reference), 0) (Hessel et al. 2021), computed with a *judge* CLIP that
  must not be the model that guided decoding.
* On the synthetic scenes: the colour, shape, size and position read back from each caption of a
  one-object image, against the scene's ground truth.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import torch

# pycocoevalcap's PTBTokenizer drops these tokens after tokenising.
# (Its list spells brackets "-LRB-" while the lower-cased tokenizer writes "-lrb-": COCO keeps them.)
PUNCTUATIONS = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...",
                ";"}
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "{": "-lcb-", "}": "-rcb-", "[": "-lsb-", "]": "-rsb-"}
_TOKEN = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*|n't|'[a-z]+|\.\.\.|--|[^\sa-z0-9]")


def python_ptb_tokenize(caption: str) -> str:
    """COCO's tokenisation without Java: lower-case, split off punctuation, drop it."""
    text = caption.replace("\n", " ").lower()
    text = re.sub(r"([a-z])n't\b", r"\1 n't", text)
    text = re.sub(r"([a-z0-9])'(s|re|ve|ll|d|m)\b", r"\1 '\2", text)  # clitics, as PTB splits them
    tokens = (_BRACKETS.get(t, t) for t in _TOKEN.findall(text))
    return " ".join(t for t in tokens if t not in PUNCTUATIONS)


def tokenize(captions: Mapping[Any, Sequence[str]]) -> tuple[dict[Any, list[str]], str]:
    """``{key: [caption, ...]}`` tokenised as COCO does; returns it and the tokeniser used."""
    if shutil.which("java"):
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        out = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
        return {k: list(v) for k, v in out.items()}, "Stanford PTBTokenizer (pycocoevalcap)"
    return {k: [python_ptb_tokenize(c) for c in v] for k, v in captions.items()}, "python (no java found)"


def caption_metrics(candidates: Mapping[Any, str], references: Mapping[Any, Sequence[str]]) -> dict[str, Any]:
    """BLEU-1..4, ROUGE-L and CIDEr-D of one candidate per key against its references."""
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError:
        from clipforge.errors import ConfigError

        raise ConfigError("caption metrics need pycocoevalcap: pip install 'clipforge[captioning]'") from None
    keys = [k for k in candidates if references.get(k)]
    if not keys:
        from clipforge.errors import DataError

        raise DataError("no captioned image has references to score against")
    # One tokenisation of candidates and references together (one java process, not two).
    both, how = tokenize({**{("c", k): [candidates[k]] for k in keys}, **{("r", k): list(references[k]) for k in keys}})
    res, gts = {k: both[("c", k)] for k in keys}, {k: both[("r", k)] for k in keys}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    return {**{f"bleu_{i + 1}": float(b) for i, b in enumerate(bleu)}, "rouge_l": float(rouge),
            "cider_d": float(cider), "n_images": len(keys), "tokenizer": how}


def clip_scores(image_features: torch.Tensor, caption_features: torch.Tensor,
                reference_features: Sequence[torch.Tensor] | None = None, w: float = 2.5) -> dict[str, float]:
    """Mean CLIP-S (and RefCLIP-S with references) from unit embeddings of a judge CLIP.

    ``image_features`` and ``caption_features``: [N, D], row i the image and its generated caption;
    ``reference_features``: per image, [R_i, D] of its reference captions.
    """
    cos = (image_features * caption_features).sum(-1)
    clip_s = w * cos.clamp(min=0)
    out = {"clip_score": float(clip_s.mean())}
    if reference_features is not None:
        ref = torch.stack([(r @ c).max().clamp(min=0) for r, c in zip(reference_features, caption_features)])
        ref_clip = 2 * clip_s * ref / (clip_s + ref).clamp(min=1e-12)
        out["ref_clip_score"] = float(ref_clip.mean())
    return out


def read_scene_caption(caption: str) -> dict[str, str | None]:
    """The first colour, shape, size and position a synthetic-scene caption names (None when absent)."""
    from clipforge.data.synthetic import COLOURS, POSITION_PHRASES, SHAPES, SIZES

    text = " " + " ".join(caption.lower().replace(",", " ").split()) + " "

    def first(words) -> str | None:
        found = [(text.find(f" {w} "), w) for w in words if f" {w} " in text]
        return min(found)[1] if found else None

    position = None
    hits = [(text.find(p), name) for name, p in POSITION_PHRASES.items() if p in text]
    if hits:
        position = min(hits)[1]
    return {"colour": first(COLOURS), "shape": first(SHAPES), "size": first(SIZES), "position": position}


def attribute_accuracy(captions: Sequence[str], truths: Sequence[Any]) -> dict[str, float | None]:
    """Per attribute: accuracy over all images (a missing attribute counts as wrong for colour and
    shape, which every caption of the scenes names) and, for size and position, which captions may
    leave out, accuracy over the captions that name one, with how often they do."""
    out: dict[str, float | None] = {}
    read = [read_scene_caption(c) for c in captions]
    n = max(len(read), 1)
    for attr in ("colour", "shape"):
        out[f"{attr}_acc"] = sum(r[attr] == getattr(t, attr) for r, t in zip(read, truths)) / n
    out["colour_and_shape_acc"] = sum(r["colour"] == t.colour and r["shape"] == t.shape
                                      for r, t in zip(read, truths)) / n
    for attr in ("size", "position"):
        named = [(r[attr], getattr(t, attr)) for r, t in zip(read, truths) if r[attr] is not None]
        out[f"{attr}_named"] = len(named) / n
        out[f"{attr}_acc_when_named"] = sum(a == b for a, b in named) / len(named) if named else None
    return out
