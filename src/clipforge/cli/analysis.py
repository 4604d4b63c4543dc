"""``clipforge eval zeroshot --ablate-prompts`` and ``clipforge eval typographic``: thin wrappers over
:mod:`clipforge.analysis`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path


def add_typographic(esub: argparse._SubParsersAction, common: Callable, data_help: str) -> None:
    t = esub.add_parser("typographic", help="typographic attack: a wrong class name written on each image; accuracy "
                        "drop and attack success against a nonsense-word control")
    common(t, data_help)
    t.add_argument("--split", default="test", help="split of a built-in dataset (default: test)")
    t.add_argument("--classes", default=None, help="class names: 'a,b,c' or a .txt/.json/.csv file")
    t.add_argument("--templates", default=None, help="template set, file or one template (default: the dataset's)")
    t.add_argument("--image-column", default="image")
    t.add_argument("--label-column", default="label")
    t.add_argument("--font", default="DejaVuSans-Bold", help="a .ttf/.otf file or a font name under the system's "
                   "font folders (default: DejaVuSans-Bold; Pillow's own font when not found)")
    t.add_argument("--text-size", type=float, default=0.22, help="text height as a fraction of the image side")
    t.add_argument("--position", choices=("centre", "top", "bottom", "random"), default="centre")
    t.add_argument("--opacity", type=float, default=1.0, help="0 (invisible) to 1")
    t.add_argument("--colour", default="white", help="text colour (outlined in black)")
    t.add_argument("--limit", type=int, default=None, help="attack at most this many images")
    t.add_argument("--seed", type=int, default=0, help="which wrong class each image gets")
    t.set_defaults(func=run_typographic)


def model_label(path: str) -> str:
    """A short name for titles and file names: ``runs/mine/model`` -> ``mine``."""
    p = Path(path)
    return p.parent.name if p.name == "model" and p.parent.name else p.name


def dataset_label(name: str) -> str:
    """``/data/scenes`` -> ``scenes``; ``synthetic/test`` -> ``synthetic_test``."""
    p = Path(name)
    return p.name if p.exists() else name.replace("/", "_")


def labelled_image_features(args: argparse.Namespace, model, ds):
    """(features, indices, targets) of the readable images of ``ds``; an unreadable set is refused."""
    import torch

    from clipforge.evaluation.cache import image_features
    from clipforge.evaluation.probe_data import warn_skipped
    from clipforge.evaluation.tasks import _require_images, _require_readable

    _require_images(ds.name, len(ds.images))
    feats, idx, skipped = image_features(model, ds.images, args.batch_size, use_cache=not args.no_cache,
                                         progress=True, label="embed images")
    _require_readable(ds.name, len(ds.images), len(idx), skipped)
    warn_skipped(skipped, ds.name)
    return feats, idx, torch.tensor(ds.labels, dtype=torch.long)[idx]


def run_prompt_ablation(args: argparse.Namespace, model, ds, templates: list[str]) -> int:

    from clipforge.analysis.prompts import ablation_markdown, ablation_plot, ablation_summary, prompt_ablation
    from clipforge.cli.evaluate import _save
    from clipforge.io import atomic_write_text

    feats, _, targets = labelled_image_features(args, model, ds)
    result = prompt_ablation(model, feats, targets, ds.classes, templates, one=args.one_template)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"prompt_ablation__{model_label(args.model)}__{dataset_label(ds.name)}"
    ablation_plot(result, out / f"{stem}.png", f"{model_label(args.model)} on {ds.name}")
    atomic_write_text(ablation_markdown(result, ds.name, args.model), out / f"{stem}.md")
    print(ablation_markdown(result, ds.name, args.model).split("\n\n| template alone")[0])
    _save(args, "prompt_ablation", ds.name, ablation_summary(result),
          {"one_template": result["one"], "templates": templates, "single": result["single"],
           "rows": {k: result[k] for k in ("bare", "one_template", "ensemble")}, "n_images": len(targets)})
    print(f"plot and summary: {out / stem}.png, .md")
    return 0


def run_typographic(args: argparse.Namespace) -> int:
    from clipforge.analysis.typographic import TextStyle, attack_report, typographic_attack
    from clipforge.cli.evaluate import _at_least, _load, _save, _templates, _text_needed
    from clipforge.data.datasets import load_classification
    from clipforge.evaluation.probe_data import warn_missing
    from clipforge.evaluation.templates import load_classnames

    _text_needed(args.model)
    _at_least(args.batch_size, 1, "--batch-size")
    if args.limit is not None:
        _at_least(args.limit, 1, "--limit")
    style = TextStyle(font=args.font, size=args.text_size, position=args.position, opacity=args.opacity,
                      colour=args.colour)
    model = _load(args.model, args.device)
    classes, per_class = load_classnames(args.classes) if args.classes else (None, None)
    ds = load_classification(args.dataset, args.split, args.image_column, args.label_column, classes)
    warn_missing(ds)
    templates = per_class or _templates(args.templates, args.dataset)
    n = min(len(ds.images), args.limit or len(ds.images))
    result = typographic_attack(model, ds.images[:n], ds.labels[:n], ds.classes, templates, style, seed=args.seed,
                                batch_size=args.batch_size, progress=True)
    if result["skipped"]:
        print(f"warning: {len(result['skipped'])} unreadable image(s) left out, e.g. {result['skipped'][0]}")
    out = Path(args.out) / f"typographic__{model_label(args.model)}__{dataset_label(ds.name)}"
    files = attack_report(result, out, f"{model_label(args.model)} on {ds.name}")
    m = result["metrics"]
    print(f"acc1 {m['acc1_clean']:.1%} without text, {m['acc1_control']:.1%} with a nonsense word, "
          f"{m['acc1_attacked']:.1%} with a wrong class name; the prediction became the written class for "
          f"{m['attack_success']:.1%} (nonsense word: {m['control_success']:.1%})")
    _save(args, "typographic_attack", ds.name, m, {"style": style.to_dict(), "seed": args.seed,
                                                   "n_skipped": len(result["skipped"])})
    print(f"report: {files['html']} (attacked examples in {out / 'attacked'})")
    return 0


def add_audit(esub: argparse._SubParsersAction, common: Callable) -> None:
    a = esub.add_parser("audit", help="class-design audit: what added candidate classes absorb, per true class and "
                        "per group, with a chi-square test")
    common(a, "CSV with image and label columns (and the --group-column), a folder of class sub-folders, or a "
           "built-in name")
    a.add_argument("--add", required=True, help="candidate classes to add: 'a,b,c' or a .txt/.json/.csv file")
    a.add_argument("--group-column", default=None, help="a column of the dataset's CSV whose values are the groups "
                   "(e.g. size, background, age)")
    a.add_argument("--split", default="test", help="split of a built-in dataset (default: test)")
    a.add_argument("--classes", default=None, help="the label set (default: the dataset's)")
    a.add_argument("--templates", default=None, help="template set, file or one template (default: the dataset's)")
    a.add_argument("--image-column", default="image")
    a.add_argument("--label-column", default="label")
    a.set_defaults(func=run_audit)


def _group_values(dataset: str, images: list[str], column: str, image_column: str) -> list[str]:
    """The ``column`` value of each image, read from the dataset's CSV."""
    import csv

    from clipforge.errors import DataError

    path = Path(dataset)
    if path.suffix.lower() not in (".csv", ".tsv") or not path.is_file():
        raise DataError(f"--group-column needs the dataset as a CSV file; {dataset} is not one")
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        if column not in (reader.fieldnames or []):
            raise DataError(f"{path}: no column {column!r} for --group-column; the header has {reader.fieldnames}")
        value = {}
        for r in reader:
            img = Path(r[image_column])
            value[str(img if img.is_absolute() else path.parent / img)] = (r[column] or "").strip() or "(empty)"
    return [value[p] for p in images]


def run_audit(args: argparse.Namespace) -> int:
    from clipforge.analysis.class_audit import audit_markdown, audit_plot, class_audit
    from clipforge.cli.evaluate import _at_least, _load, _save, _templates, _text_needed
    from clipforge.data.datasets import load_classification
    from clipforge.errors import ClipforgeError
    from clipforge.evaluation.probe_data import warn_missing
    from clipforge.evaluation.templates import get_templates, load_classnames
    from clipforge.evaluation.zero_shot import zero_shot_classifier
    from clipforge.io import atomic_write_text

    _text_needed(args.model)
    _at_least(args.batch_size, 1, "--batch-size")
    added, added_prompts = load_classnames(args.add)
    model = _load(args.model, args.device)
    classes, per_class = load_classnames(args.classes) if args.classes else (None, None)
    ds = load_classification(args.dataset, args.split, args.image_column, args.label_column, classes)
    warn_missing(ds)
    clash = sorted(set(added) & set(ds.classes))
    if clash:
        raise ClipforgeError(f"--add: {clash[:5]} are already classes of the label set")
    templates = per_class or _templates(args.templates, args.dataset)
    if per_class is not None and added_prompts is None:
        raise ClipforgeError("the label set has per-class prompts; give the added classes theirs too (a .json/.csv)")
    feats, idx, targets = labelled_image_features(args, model, ds)
    groups = None
    if args.group_column:
        values = _group_values(args.dataset, ds.images, args.group_column, args.image_column)
        groups = [values[i] for i in idx.tolist()]
    weights = zero_shot_classifier(model, ds.classes, templates)
    extra = zero_shot_classifier(model, added, added_prompts or (templates if per_class is None
                                                                 else get_templates("a photo of a {c}.")))
    result = class_audit(feats, targets, weights, extra, ds.classes, added, groups)
    title = f"{model_label(args.model)} on {dataset_label(ds.name)}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"audit__{model_label(args.model)}__{dataset_label(ds.name)}"
    md = audit_markdown(result, title, args.group_column)
    atomic_write_text(md, out / f"{stem}.md")
    print(md)
    if groups is not None:
        audit_plot(result, out / f"{stem}.png", title, args.group_column)
    metrics = {k: result[k] for k in ("acc1_before", "acc1_after", "absorbed_fraction")}
    if groups is not None and result["chi_square"]["p_value"] is not None:
        metrics["chi_square_p_value"] = result["chi_square"]["p_value"]
    _save(args, "class_audit", ds.name, metrics, {"added": added, "group_column": args.group_column, **result})
    print(f"summary: {out / stem}.md" + (f", plot: {out / stem}.png" if groups is not None else ""))
    return 0


def add_concepts(esub: argparse._SubParsersAction, common: Callable) -> None:
    c = esub.add_parser("concepts", help="how each class is composed of concepts: a sparse (L1) probe from concept "
                        "scores to classes, the sparsity/accuracy trade-off")
    common(c, "labelled images (built-in name, class folders, CSV); split in halves unless --test is given")
    c.add_argument("--concepts", required=True, help="the concept vocabulary: 'red,circle,striped' or a "
                   ".txt/.json/.csv file")
    c.add_argument("--concept-template", default="{c}", help="how a concept becomes a prompt (default: '{c}')")
    c.add_argument("--test", default=None, help="test set (same classes); default: half of --dataset, per class")
    c.add_argument("--split", default="test", help="split of a built-in dataset (default: test)")
    c.add_argument("--image-column", default="image")
    c.add_argument("--label-column", default="label")
    c.add_argument("--seed", type=int, default=0, help="the half split")
    c.set_defaults(func=run_concepts)


def stratified_halves(labels: list[int], seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices of two halves with every class split evenly (odd counts: the extra one to the first)."""
    import random

    rng = random.Random(seed)
    first, second = [], []
    for c in sorted(set(labels)):
        rows = [i for i, y in enumerate(labels) if y == c]
        rng.shuffle(rows)
        half = (len(rows) + 1) // 2
        first += rows[:half]
        second += rows[half:]
    return sorted(first), sorted(second)


def run_concepts(args: argparse.Namespace) -> int:
    from clipforge.analysis.concepts import (
        composition_hits,
        concept_scores,
        concepts_markdown,
        concepts_plot,
        sparse_concept_probe,
    )
    from clipforge.cli.evaluate import _at_least, _load, _save, _text_needed
    from clipforge.data.datasets import load_classification
    from clipforge.errors import ClipforgeError
    from clipforge.evaluation.probe_data import labelled_features, warn_missing
    from clipforge.evaluation.templates import load_classnames
    from clipforge.evaluation.zero_shot import zero_shot_classifier
    from clipforge.io import atomic_write_text

    _text_needed(args.model)
    _at_least(args.batch_size, 1, "--batch-size")
    concepts, _ = load_classnames(args.concepts)
    if len(concepts) < 2:
        raise ClipforgeError("--concepts: give at least two concepts")
    model = _load(args.model, args.device)
    ds = load_classification(args.dataset, args.split, args.image_column, args.label_column)
    warn_missing(ds)
    x, y, _ = labelled_features(model, ds, args.batch_size, not args.no_cache, "embed images")
    if args.test:
        test = load_classification(args.test, image_column=args.image_column, label_column=args.label_column,
                                   classes=ds.classes)
        xte, yte, _ = labelled_features(model, test, args.batch_size, not args.no_cache, "embed test")
        xtr, ytr = x, y
    else:
        a, b = stratified_halves(y.tolist(), args.seed)
        xtr, ytr, xte, yte = x[a], y[a], x[b], y[b]
    if len(set(ytr.tolist())) < 2:
        raise ClipforgeError(f"{ds.name}: the training half holds fewer than two classes")
    weights = zero_shot_classifier(model, concepts, [args.concept_template])
    result = sparse_concept_probe(concept_scores(xtr, weights), ytr.numpy(), concept_scores(xte, weights),
                                  yte.numpy(), concepts, ds.classes)
    result["top_concepts_are_the_name"] = composition_hits(result["composition"], concepts)
    title = f"{model_label(args.model)} on {dataset_label(ds.name)}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"concepts__{model_label(args.model)}__{dataset_label(ds.name)}"
    md = concepts_markdown(result, title)
    atomic_write_text(md, out / f"{stem}.md")
    concepts_plot(result, out / f"{stem}.png", title)
    print(md.split("\n| class |")[0])
    for name, parts in list(result["composition"].items())[:8]:
        print(f"  {name} = " + " + ".join(f"{c} ({w:.2f})" for c, w in parts))
    ch = result["chosen"]
    _save(args, "concept_probe", ds.name, {"acc1": ch["acc1"], "concepts_per_class": ch["concepts_per_class"],
                                            "top_concepts_are_the_name": result["top_concepts_are_the_name"]},
          {"concepts": concepts, "concept_template": args.concept_template, "n_train": len(ytr),
           "n_test": len(yte), **{k: v for k, v in result.items() if k != "top_concepts_are_the_name"}})
    print(f"summary: {out / stem}.md, plot: {out / stem}.png")
    return 0


def add_robustness(esub: argparse._SubParsersAction, common: Callable) -> None:
    r = esub.add_parser("robustness", help="accuracy under distribution shifts: zero-shot against linear probes "
                        "and supervised baselines, effective robustness")
    common(r, "labelled images (built-in synthetic or digits, class folders, CSV); split in halves unless --test")
    r.add_argument("--test", default=None, help="source test set (same classes); default: half of --dataset")
    r.add_argument("--split", default="seen", help="split of a built-in dataset (synthetic: seen; digits: both "
                   "train and test are used)")
    r.add_argument("--shifts", default=None, help="comma-separated: blur, noise, jitter (any images); background, "
                   "outline (synthetic scenes, re-rendered); fonts (digits typeset in system fonts). Default: all "
                   "that apply")
    r.add_argument("--shifted", action="append", default=[], metavar="NAME=CSV",
                   help="a shifted test set of your own (same classes); repeatable")
    r.add_argument("--templates", default=None, help="template set, file or one template (default: the dataset's)")
    r.add_argument("--image-column", default="image")
    r.add_argument("--label-column", default="label")
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(func=run_robustness)


def _synthetic_source(dataset: str, split: str):
    """(data folder, zero-shot split) when ``dataset`` is the synthetic scenes, else None."""
    import json

    from clipforge.data.datasets import synthetic_root

    if dataset == "synthetic":
        return synthetic_root(), {"seen": "zeroshot_seen", "train": "zeroshot_seen"}.get(split, "zeroshot_heldout")
    p = Path(dataset)
    meta = p.parent / "meta.json"
    if p.suffix == ".csv" and p.stem.startswith("zeroshot") and meta.is_file() \
            and json.loads(meta.read_text()).get("dataset") == "clipforge-synthetic-scenes":
        return p.parent, p.stem
    return None


def _read(paths: list[str]) -> tuple[list, list[int], list[str]]:
    from clipforge.images.decode import open_image

    images, keep, bad = [], [], []
    for i, p in enumerate(paths):
        try:
            images.append(open_image(p))
            keep.append(i)
        except Exception as e:  # a bad file is counted and left out
            bad.append(f"{p}: {str(e).splitlines()[0][:100]}")
    return images, keep, bad


def run_robustness(args: argparse.Namespace) -> int:
    import json

    import numpy as np

    from clipforge.analysis.robustness import (
        IMAGE_SHIFTS,
        apply_shift,
        robustness_experiment,
        robustness_markdown,
        robustness_plot,
    )
    from clipforge.cli.evaluate import _at_least, _load, _save, _templates, _text_needed
    from clipforge.data.datasets import cache_dir, load_classification
    from clipforge.errors import ClipforgeError
    from clipforge.evaluation.probe_data import warn_missing
    from clipforge.io import atomic_write_text

    _text_needed(args.model)
    _at_least(args.batch_size, 1, "--batch-size")
    model = _load(args.model, args.device)
    synth = _synthetic_source(args.dataset, args.split)
    if args.dataset == "digits":
        train_ds, test_ds = load_classification("digits", "train"), load_classification("digits", "test")
    elif synth is not None and args.dataset == "synthetic":
        train_ds = load_classification(str(synth[0] / f"{synth[1]}.csv"))
        test_ds = None
    else:
        train_ds = load_classification(args.dataset, args.split, args.image_column, args.label_column)
        test_ds = load_classification(args.test, image_column=args.image_column, label_column=args.label_column,
                                      classes=train_ds.classes) if args.test else None
    warn_missing(train_ds)
    imgs, keep, bad = _read(train_ds.images)
    labels = np.array(train_ds.labels)[keep]
    if test_ds is None:  # halves of the one set, per class
        a, b = stratified_halves(labels.tolist(), args.seed)
        train = ([imgs[i] for i in a], labels[a])
        test = ([imgs[i] for i in b], labels[b])
        test_rows = [keep[i] for i in b]
    else:
        timgs, tkeep, tbad = _read(test_ds.images)
        bad += tbad
        train, test = (imgs, labels), (timgs, np.array(test_ds.labels)[tkeep])
        test_rows = tkeep
    if bad:
        print(f"warning: {len(bad)} unreadable image(s) left out, e.g. {bad[0]}")
    known = list(IMAGE_SHIFTS) + (["background", "outline"] if synth else []) + \
        (["fonts"] if args.dataset == "digits" else [])
    shifts = [s.strip() for s in args.shifts.split(",") if s.strip()] if args.shifts else known
    unknown = [s for s in shifts if s not in known]
    if unknown:
        raise ClipforgeError(f"--shifts: {unknown} do not apply to {args.dataset}; these do: {', '.join(known)}")
    shifted = {}
    for s in shifts:
        if s in IMAGE_SHIFTS:
            shifted[s] = (apply_shift(test[0], s, args.seed), test[1])
        elif s == "fonts":
            from clipforge.data.font_digits import font_digits

            fonts = font_digits(cache_dir() / "digits_fonts")
            fimgs, fkeep, _ = _read(fonts.images)
            shifted[s] = (fimgs, np.array(fonts.labels)[fkeep])
        else:
            from clipforge.data.synthetic import SynthConfig, shifted_split

            meta = json.loads((synth[0] / "meta.json").read_text())
            rendered = list(shifted_split(synth[1], SynthConfig(**meta["config"]), s))
            if len(rendered) != len(train_ds.images) + len(train_ds.missing):
                raise ClipforgeError(f"{args.dataset}: {len(rendered)} scenes re-rendered for {len(train_ds.images)} "
                                     "rows; the CSV is not the generator's (re-make the data)")
            shifted[s] = ([rendered[i][0] for i in test_rows], test[1])
    for spec in args.shifted:
        name, _, path = spec.partition("=")
        if not path:
            raise ClipforgeError(f"--shifted {spec!r}: expected NAME=CSV")
        ds = load_classification(path, image_column=args.image_column, label_column=args.label_column,
                                 classes=train_ds.classes)
        simgs, skeep, sbad = _read(ds.images)
        shifted[name] = (simgs, np.array(ds.labels)[skeep])
    templates = _templates(args.templates, args.dataset)
    result = robustness_experiment(model, train, test, shifted, train_ds.classes, templates, args.seed, progress=True)
    name = "digits" if args.dataset == "digits" else train_ds.name  # its train and test splits, not one of them
    title = f"{model_label(args.model)} on {dataset_label(name)}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"robustness__{model_label(args.model)}__{dataset_label(name)}"
    md = robustness_markdown(result["points"], result["table"], title, ["zero-shot", "linear probe C=1"])
    atomic_write_text(md, out / f"{stem}.md")
    robustness_plot(result["points"], result["table"], result["baselines"], out / f"{stem}.png", title, result["n"])
    print(md)
    er = {f"zero_shot_er_{s}": v["effective_robustness"]["zero-shot"] for s, v in result["table"].items()}
    _save(args, "robustness", name, {"zero_shot_source": result["points"]["zero-shot"]["source"], **er},
          {"shifts": list(shifted), "n_train": len(train[1]), "n_test": result["n"], **result})
    print(f"summary: {out / stem}.md, plot: {out / stem}.png")
    return 0
