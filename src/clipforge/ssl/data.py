"""Images for self-supervised training and labelled sets for its evaluation."""

from __future__ import annotations

import numpy as np

from clipforge.data.datasets import BUILTIN, LabelledImages, load_classification
from clipforge.data.pairs import IMAGE_SUFFIXES
from clipforge.data.shards import is_shard_source
from clipforge.errors import DataError


def unlabelled_images(source: str) -> list[str]:
    """Image paths of a folder (recursive), shards (extracted once) or a built-in set's training split
    (``digits`` is ``digits:train``: a built-in name never means its held-out split)."""
    from pathlib import Path

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
    ``test`` (their ``name`` fields say which). ``synthetic``: single-object scenes labelled by shape."""
    name = name.removesuffix(":train").removesuffix(":test")  # the evaluation always uses both splits
    if name == "digits":
        return load_classification("digits", "train"), load_classification("digits", "test")
    if name != "synthetic":
        raise DataError(f"eval_data must be synthetic or digits, got {name!r}")
    from sklearn.model_selection import train_test_split

    from clipforge.data.synthetic import SHAPES

    seen, held = load_classification("synthetic", "seen"), load_classification("synthetic", "heldout")
    images = seen.images + held.images
    shapes = [seen.classes[i].split()[1] for i in seen.labels] + [held.classes[i].split()[1] for i in held.labels]
    labels = [SHAPES.index(s) for s in shapes]
    tr, te = train_test_split(np.arange(len(images)), test_size=0.3, random_state=seed, stratify=labels)
    mk = lambda idx, split: LabelledImages(f"synthetic-shape/{split}", [images[i] for i in idx],  # noqa: E731
                                           [labels[i] for i in idx], list(SHAPES))
    return mk(sorted(tr), "train"), mk(sorted(te), "test")
