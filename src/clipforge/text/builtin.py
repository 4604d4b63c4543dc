"""Built-in text data, made offline from what every machine has.

* **Scenes**: the synthetic scenes' captions (:mod:`clipforge.data.synthetic`). Two phrasings of
  one scene are paraphrases; the same scene with one object's colour or shape changed is a near
  miss (a hard negative). Training pairs come from the training scenes, evaluation from the
  validation scenes.
* **Python's documentation**: the language reference's sections shipped with CPython
  (``pydoc_data.topics``, what ``help("assert")`` prints), split at their underlined headings; the
  heading is the query and its section the passage. Half the sections (by a hash of the heading)
  are for training, the other half's headings are the evaluation queries over every section.

:func:`write_text_data` writes it all as CSV files: ``train/pairs.csv`` (anchor, positive,
negative), ``train/sentences.txt`` (raw sentences, for SimCSE and from-scratch pretraining) and
one file per evaluation task under ``eval/`` (their headers say their kind, see
:mod:`clipforge.text.tasks`).
"""

from __future__ import annotations

import csv
import hashlib
import random
import re
from dataclasses import replace
from pathlib import Path

from clipforge.data.synthetic import COLOURS, SHAPES, SceneObject, SynthConfig, caption_forms, scene_objects
from clipforge.io import atomic_folder

_UNDERLINE = re.compile(r"([=*\-~^])\1{2,}")


def _caption(objs: list[SceneObject], rng: random.Random, avoid: str | None = None) -> str:
    """A random phrasing of ``objs`` different from ``avoid`` when the grammar has another."""
    forms = caption_forms(objs, with_size=rng.random() < 0.6)
    if avoid is not None and len(forms) > 1:
        forms = [f for f in forms if f != avoid] or forms
    return rng.choice(forms)


def near_miss(objs: list[SceneObject], rng: random.Random) -> list[SceneObject]:
    """``objs`` with one object's colour or shape changed (to a combination other than its own)."""
    i = rng.randrange(len(objs))
    o = objs[i]
    if rng.random() < 0.5:
        changed = replace(o, colour=rng.choice([c for c in COLOURS if c != o.colour]))
    else:
        changed = replace(o, shape=rng.choice([s for s in SHAPES if s != o.shape]))
    return [*objs[:i], changed, *objs[i + 1:]]


def content(objs: list[SceneObject]) -> frozenset[tuple[str, str]]:
    """What every phrasing of a scene states: its (colour, shape) pairs."""
    return frozenset((o.colour, o.shape) for o in objs)


def scene_pairs(n: int, seed: int = 0, split: str = "train") -> list[tuple[str, str, str]]:
    """(anchor, paraphrase, near miss) triplets of ``n`` scenes of ``split``."""
    rng = random.Random(seed)
    scenes = scene_objects(split, SynthConfig(seed=seed, n_train=n, n_val=n))[:n]
    out = []
    for objs in scenes:
        anchor = _caption(objs, rng)
        out.append((anchor, _caption(objs, rng, avoid=anchor), _caption(near_miss(objs, rng), rng)))
    return out


def pydoc_sections() -> list[tuple[str, str, bool]]:
    """(heading, section text, is_training) of Python's reference topics, each heading once."""
    from pydoc_data.topics import topics

    sections: dict[str, str] = {}
    for key in sorted(topics):
        lines = topics[key].split("\n")
        heads = [i - 1 for i in range(1, len(lines)) if _UNDERLINE.fullmatch(lines[i].strip())
                 and lines[i - 1].strip() and len(lines[i].strip()) == len(lines[i - 1].strip())]
        for k, h in enumerate(heads):
            end = heads[k + 1] if k + 1 < len(heads) else len(lines)
            body = " ".join(" ".join(lines[h + 2:end]).split())
            heading = lines[h].strip()
            if len(body.split()) >= 8 and heading not in sections:
                sections[heading] = " ".join(body.split()[:200])  # a passage, not a chapter
    return [(h, b, int(hashlib.md5(h.encode()).hexdigest(), 16) % 2 == 0) for h, b in sections.items()]


def _write_csv(path: Path, header: list[str], rows: list[tuple]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def eval_rows(seed: int = 1, n: int = 600) -> dict[str, tuple[list[str], list[tuple]]]:
    """The evaluation tasks' rows: file name -> (header, rows). Validation scenes and the held-out
    documentation headings only; nothing here is in ``train/``."""
    rng = random.Random(seed)
    scenes = scene_objects("val", SynthConfig(seed=seed, n_val=n))
    tasks: dict[str, tuple[list[str], list[tuple]]] = {}

    # Retrieval: a caption of each scene against one other phrasing of every scene; every passage
    # stating the same (colour, shape) pairs is relevant.
    queries = [_caption(objs, rng) for objs in scenes[:200]]
    passages = [_caption(objs, rng, avoid=queries[i] if i < len(queries) else None) for i, objs in enumerate(scenes)]
    rows = [(q, passages[j]) for i, q in enumerate(queries) for j in range(len(scenes))
            if content(scenes[j]) == content(scenes[i])]
    rows += [("", p) for p in passages]  # passages with no query: the rest of the corpus
    tasks["retrieval_scenes.csv"] = (["query", "passage"], rows)

    docs = pydoc_sections()
    rows = [(h, b) for h, b, train in docs if not train] + [("", b) for _, b, train in docs if train]
    tasks["retrieval_pydoc.csv"] = (["query", "passage"], rows)

    # Semantic similarity graded by the Jaccard overlap of the two scenes' (colour, shape) pairs.
    sts = []
    for objs in scenes[:n]:
        kind = rng.random()
        other = (objs if kind < 0.25 else near_miss(objs, rng) if kind < 0.6
                 else near_miss(near_miss(objs, rng), rng) if kind < 0.8 else rng.choice(scenes))
        a, b = content(objs), content(other)
        sts.append((_caption(objs, rng), _caption(other, rng), round(len(a & b) / len(a | b), 4)))
    tasks["sts_scenes.csv"] = (["sentence1", "sentence2", "score"], sts)

    # Paraphrase deduplication: the same scene (1) against a near miss (0), half each.
    pairs = []
    for i, objs in enumerate(scenes[:n]):
        first = _caption(objs, rng)
        second = _caption(objs, rng, avoid=first) if i % 2 == 0 else _caption(near_miss(objs, rng), rng)
        pairs.append((first, second, int(i % 2 == 0)))
    tasks["pairs_scenes.csv"] = (["sentence1", "sentence2", "label"], pairs)

    # Classification: the first-named object's shape in captions of two or three objects (word
    # order matters: a bag of words cannot tell it).
    multi = [objs for objs in scenes if len(objs) > 1]
    cls = [(_caption(objs, rng), objs[0].shape, "train" if i % 3 else "test") for i, objs in enumerate(multi)]
    tasks["classification_scenes.csv"] = (["text", "label", "split"], cls)

    # Clustering: every phrasing of 40 two-object scenes, half of them near misses of another.
    bases = [objs for objs in multi if len(objs) == 2][:20]
    groups = bases + [near_miss(objs, rng) for objs in bases]
    clusters = [(form, str(g)) for g, objs in enumerate(groups)
                for form in dict.fromkeys(caption_forms(objs, True) + caption_forms(objs, False))]
    tasks["clustering_scenes.csv"] = (["text", "label"], clusters)
    return tasks


def write_text_data(out: str | Path, n_train: int = 4000, seed: int = 0) -> Path:
    """The built-in training pairs, raw sentences and evaluation tasks as CSV files (see the module docstring)."""
    rng = random.Random(seed)
    docs = pydoc_sections()
    train_docs = [(h, b) for h, b, train in docs if train]
    triplets = scene_pairs(n_train, seed)
    for h, b in train_docs:
        triplets.append((h, b, rng.choice([o for _, o in train_docs if o != b])))
    rng.shuffle(triplets)
    with atomic_folder(Path(out)) as tmp:
        (tmp / "train").mkdir()
        (tmp / "eval").mkdir()
        _write_csv(tmp / "train" / "pairs.csv", ["anchor", "positive", "negative"], triplets)
        sentences = list(dict.fromkeys(s for a, p, _ in triplets for s in (a, p)))
        (tmp / "train" / "sentences.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
        for name, (header, rows) in eval_rows(seed + 1).items():
            _write_csv(tmp / "eval" / name, header, rows)
    return Path(out)
