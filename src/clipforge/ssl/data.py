"""Images for self-supervised training and labelled sets for its evaluation."""

from __future__ import annotations

import numpy as np

from clipforge.data.datasets import BUILTIN, LabelledImages, load_classification
from clipforge.data.pairs import IMAGE_SUFFIXES
from clipforge.data.shards import is_shard_source
from clipforge.errors import DataError

OBJECTS = "objects"  # the scenes' objects cut out at their cells (clipforge.data.synthetic_objects)
EVAL_SETS = ("digits", "synthetic", OBJECTS, f"{OBJECTS}-colour")


def scored_sets(name: str) -> dict[str, str]:
    """The labelled sets an encoder trained for ``name`` is scored on, by metric prefix: the objects
    are labelled by shape and by colour, every other set by one label."""
    return {"": name, "colour_": f"{OBJECTS}-colour"} if name == OBJECTS else {"": name}


def unlabelled_images(source: str) -> list[str]:
    """Image paths of a folder (recursive), shards (extracted once) or a built-in set's training split
    (``digits`` is ``digits:train``: a built-in name never means its held-out split; ``objects`` is the
    training scenes' objects, cut out at their cells)."""
    from pathlib import Path

    if source == OBJECTS:
        from clipforge.data.synthetic_objects import training_crops

        return training_crops()
    if source.endswith(":train") and source.removesuffix(":train") in BUILTIN:
        source = source.removesuffix(":train")
    elif ":" in source and source.split(":")[0] in BUILTIN:
        raise DataError(f"data={source}: SSL pretraining reads a built-in set's training split only "
                        f"({source.split(':')[0]} or {source.split(':')[0]}:train); its held-out split is for "
                        "evaluation")
    if source in BUILTIN:
        if source == "synthetic":
            from clipforge.data.datasets import synthetic_root
            from clipforge.data.pairs import read_csv_pairs

            return [p.image for p in read_csv_pairs(synthetic_root() / "train.csv")[0]]
        return load_classification("digits", "train").images
    p = Path(source)
    if p.is_dir():
        images = sorted(str(q) for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"{p}: no images found")
        return images
    if is_shard_source(source):
        return load_classification(source).images
    raise DataError(f"{source}: expected a folder of images, webdataset shards, or one of {', '.join(BUILTIN)}")


def labelled_sets(name: str, seed: int = 0) -> tuple[LabelledImages, LabelledImages]:
    """(train, test) for kNN / linear probes: the probes fit on ``train`` and are scored on the held-out
    ``test`` (their ``name`` fields say which). ``synthetic``: single-object scenes labelled by shape;
    ``objects`` / ``objects-colour``: the same objects cut out at their cells, labelled by shape / colour."""
    name = name.removesuffix(":train").removesuffix(":test")  # the evaluation always uses both splits
    if name == "digits":
        return load_classification("digits", "train"), load_classification("digits", "test")
    from clipforge.data.synthetic import COLOURS, SHAPES

    if name in (OBJECTS, f"{OBJECTS}-colour"):
        from clipforge.data.synthetic_objects import labelled_crops

        key, classes = ("shape", list(SHAPES)) if name == OBJECTS else ("colour", list(COLOURS))
        rows = labelled_crops()
        return _split(name, [r["image"] for r in rows], [classes.index(r[key]) for r in rows], classes, seed)
    if name != "synthetic":
        raise DataError(f"eval_data must be one of {', '.join(EVAL_SETS)}, got {name!r}")
    seen, held = load_classification("synthetic", "seen"), load_classification("synthetic", "heldout")
    shapes = [seen.classes[i].split()[1] for i in seen.labels] + [held.classes[i].split()[1] for i in held.labels]
    return _split("synthetic-shape", seen.images + held.images, [SHAPES.index(s) for s in shapes], list(SHAPES),
                  seed)


def _split(name: str, images: list[str], labels: list[int], classes: list[str], seed: int
           ) -> tuple[LabelledImages, LabelledImages]:
    """A stratified 70/30 split, fixed by the seed."""
    from sklearn.model_selection import train_test_split

    tr, te = train_test_split(np.arange(len(images)), test_size=0.3, random_state=seed, stratify=labels)
    mk = lambda idx, split: LabelledImages(f"{name}/{split}", [images[i] for i in idx],  # noqa: E731
                                           [labels[i] for i in idx], classes)
    return mk(sorted(tr), "train"), mk(sorted(te), "test")
