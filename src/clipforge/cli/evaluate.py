"""``clipforge eval ...`` and ``clipforge classify``: thin wrappers over clipforge.evaluation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from clipforge.inference.options import add_inference_options

    p = sub.add_parser("eval", help="evaluate a model: zero-shot, retrieval, linear probe, few-shot, overlap")
    esub = p.add_subparsers(dest="eval_command", required=True, metavar="EVAL_COMMAND")

    def common(q: argparse.ArgumentParser, dataset_help: str) -> None:
        q.add_argument("--model", required=True, help="any checkpoint clipforge.load reads")
        q.add_argument("--dataset", required=True, help=dataset_help)
        q.add_argument("--out", default="results", help="folder for the result JSON (default: results)")
        q.add_argument("--batch-size", type=int, default=128)
        q.add_argument("--no-cache", action="store_true", help="do not read or write cached features")
        q.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
        add_inference_options(q)

    data_help = ("built-in name (synthetic, digits), folder of class sub-folders, CSV with image and label "
                 "columns, or shards with cls entries")
    z = esub.add_parser("zeroshot", help="zero-shot classification")
    common(z, data_help)
    z.add_argument("--split", default="test", help="split of a built-in dataset (default: test)")
    z.add_argument("--classes", default=None, help="class names: 'a,b,c' or a .txt/.json/.csv file (default: the "
                   "dataset's)")
    z.add_argument("--templates", default=None, help="template set name (e.g. imagenet1k, cifar10), a file, or one "
                   "template with {c} (default: the dataset's set, else 'a photo of a {c}.')")
    z.add_argument("--image-column", default="image")
    z.add_argument("--label-column", default="label")
    z.add_argument("--confusion", default=None, help="write the confusion matrix to this PNG")
    z.add_argument("--ablate-prompts", action="store_true", help="the CLIP paper's prompt ablation: the bare class "
                   "name, one template and the ensemble, and each template alone (JSON, plot and Markdown in --out)")
    z.add_argument("--scoring", choices=("embedding", "likelihood"), default="embedding",
                   help="embedding: cosine to the prompts' text embeddings; likelihood: each prompt's log-likelihood "
                   "given the image (a CoCa's decoder; bag-of-words models always)")
    z.add_argument("--one-template", default=None, help="--ablate-prompts: the single template (default: the set's "
                   "first)")
    z.set_defaults(func=run_zeroshot)

    from clipforge.cli.analysis import add_audit, add_concepts, add_robustness, add_typographic

    add_typographic(esub, common, data_help)
    add_audit(esub, common)
    add_concepts(esub, common)
    add_robustness(esub, common)

    r = esub.add_parser("retrieval", help="image-text retrieval recall@k")
    common(r, "CSV of image,caption pairs (an image may have several rows), a captioned folder, or synthetic")
    r.add_argument("--image-column", default="image")
    r.add_argument("--caption-column", default="caption")
    r.set_defaults(func=run_retrieval)

    lp = esub.add_parser("linear-probe", help="logistic regression on frozen image features (CLIP paper protocol)")
    common(lp, "built-in name with train/test splits, or the training set (then give --test)")
    lp.add_argument("--test", default=None, help="test set when --dataset is not a built-in")
    lp.add_argument("--normalize", choices=["yes", "no"], default=None,
                    help="L2-normalise features (default: yes for models, no for --model pixels)")
    lp.add_argument("--image-column", default="image")
    lp.add_argument("--label-column", default="label")
    lp.set_defaults(func=run_linear_probe)

    fs = esub.add_parser("fewshot", help="k-shot linear probes (k examples per class from the training split only)")
    common(fs, "built-in name with train/test splits, or the training set (then give --test)")
    fs.add_argument("--test", default=None)
    fs.add_argument("-k", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    fs.add_argument("--seed", type=int, default=0)
    fs.add_argument("--zeroshot-init", action="store_true", help="also start from the zero-shot classifier")
    fs.add_argument("--pull", type=float, default=None, help="zero-shot init: weight of the pull towards the "
                    "zero-shot classifier (default: chosen by cross-validation on the k-shot examples, 0 included)")
    fs.add_argument("--templates", default=None)
    fs.set_defaults(func=run_fewshot)

    ov = esub.add_parser("overlap", help="nearest training neighbours of test images; accuracy clean vs overlapping")
    common(ov, "built-in name with train/test splits, or the training set (then give --test)")
    ov.add_argument("--test", default=None)
    ov.add_argument("--threshold", type=float, default=None,
                    help="cosine similarity at or above which a test image counts as a duplicate of its nearest "
                    "training image (default: calibrated on near-duplicates planted in the training set)")
    ov.add_argument("--plant", type=int, default=200, help="near-duplicates planted to calibrate the threshold")
    ov.add_argument("--features", choices=("pixels", "model"), default="pixels",
                    help="what counts as a duplicate: 'pixels' (mean-centred 16x16 thumbnails: rescaled, trimmed or "
                    "re-encoded copies; default) or 'model' (the model's embedding, the CLIP paper's nearest "
                    "neighbours: images that mean the same)")
    ov.add_argument("--templates", default=None)
    ov.set_defaults(func=run_overlap)

    cap = esub.add_parser("captioning", help="caption a dataset; BLEU, ROUGE-L, CIDEr-D, CLIP-score, scene attributes")
    cap.add_argument("--model", required=True, help="a captioner (e.g. a CoCa)")
    cap.add_argument("--dataset", required=True, help="CSV of image,caption (several rows per image are several "
                     "references), a captioned folder, or synthetic (then also the scene attributes)")
    cap.add_argument("--judge", default=None, help="a separate CLIP for CLIP-score and RefCLIP-score (never the "
                     "captioner)")
    cap.add_argument("--limit", type=int, default=None, help="caption at most this many images")
    cap.add_argument("--attribute-images", type=int, default=200,
                     help="synthetic: one-object images per split (seen, held-out) for the attributes")
    cap.add_argument("--strategy", choices=("greedy", "beam", "sample"), default="beam")
    cap.add_argument("--num-beams", type=int, default=4)
    cap.add_argument("--max-len", type=int, default=30)
    cap.add_argument("--out", default="results", help="folder for the result JSON (default: results)")
    cap.add_argument("--batch-size", type=int, default=16)
    cap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    cap.set_defaults(func=run_captioning)

    gen = esub.add_parser("generation", help="a generator judged on the synthetic scenes: CLIP-score, R-precision, "
                          "attributes read back, Frechet distance; an HTML report of samples")
    gen.add_argument("--model", required=True, help="a generator folder (clipforge generate train)")
    gen.add_argument("--judge", required=True, help="a separate CLIP (another seed and image tower, trained on the "
                     "same data): never the generator's CLIP nor its re-ranker")
    gen.add_argument("--dataset", required=True, help="the synthetic-scenes folder the generator was trained on")
    gen.add_argument("-n", type=int, default=4, help="images per prompt (64 prompts; default: 4)")
    gen.add_argument("--steps", type=int, default=50)
    gen.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim")
    gen.add_argument("--guidance", type=float, default=3.0)
    gen.add_argument("--rerank", type=int, default=1, help="re-rank rerank * n samples by the generator's CLIP")
    gen.add_argument("--search", choices=("ga", "grad", "random"), default=None,
                     help="CLIP-guided latent search by the generator's CLIP (ddpm, GANs)")
    gen.add_argument("--budget", type=int, default=64, help="latent search: generator calls per prompt")
    gen.add_argument("--word-edits", action="store_true", help="also edit one word of each prompt (colour, shape) "
                     "with the latent fixed: is the edit drawn and the rest kept? (ddpm, GANs)")
    gen.add_argument("--no-prior", action="store_true", help="unclip: decode the text embedding itself")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", default="results/generation", help="folder for metrics.json and report.html")
    gen.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    gen.set_defaults(func=run_generation)

    from clipforge.cli.text import add_eval_parser

    add_eval_parser(esub)

    rep = esub.add_parser("report", help="a table (Markdown and CSV) of a folder of results")
    rep.add_argument("folder")
    rep.add_argument("--csv", default=None, help="also write the CSV here")
    rep.set_defaults(func=run_report)

    c = sub.add_parser("classify", help="zero-shot classify images against class names")
    c.add_argument("--model", required=True)
    c.add_argument("--labels", required=True, help="'cat,dog,bird' or a class-name file")
    c.add_argument("--templates", default="a photo of a {c}.", help="template set name, file, or one template")
    c.add_argument("--top", type=int, default=3, help="classes shown per image (default: 3)")
    c.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    add_inference_options(c)
    c.add_argument("images", nargs="+")
    c.set_defaults(func=run_classify)


def _load(model_path: str, device: str | None = None, text: bool = True):
    """The model at ``model_path``, refused with one line when it cannot embed images (or, with
    ``text``, texts) as the command needs."""
    from clipforge.checkpoints import load
    from clipforge.checkpoints.load import no_tokenizer_message
    from clipforge.engine.distributed import default_device, init_distributed
    from clipforge.errors import ClipforgeError

    # Under torchrun the ranks share the feature extraction; rank 0 writes the result.
    info = init_distributed()
    if model_path == "pixels":
        return None  # raw pixels: only meaningful for linear probes
    model = load(model_path).to(default_device(info, device))
    arch = getattr(model, "arch", "clip")
    if not callable(getattr(model, "encode_image", None)):
        raise ClipforgeError(f"{model_path}: a {arch} model does not embed images; this command needs a CLIP")
    if text and not callable(getattr(model, "encode_text", None)):
        raise ClipforgeError(f"{model_path}: a {arch} model has no text embedding, which this command needs "
                             "(eval zeroshot scores its prompts by likelihood; linear probes use its image features)")
    if model.tokenizer is None:
        raise ClipforgeError(f"{model_path}: {no_tokenizer_message(model)}")
    return model


def _on_inference_path(model, args: argparse.Namespace):
    """``model`` with its towers on the path ``--backend``/``--precision`` ask for
    (:func:`clipforge.inference.choice.prepare_for_inference`); under torchrun rank 0 measures first
    and the other ranks read its cache."""
    from clipforge.engine.distributed import barrier, current_dist
    from clipforge.inference.choice import prepare_for_inference

    if model is None:  # --model pixels
        return model
    info = current_dist()
    if not info.is_main:
        barrier(info)
    model = prepare_for_inference(model, next(model.parameters()).device, args.backend, args.precision)
    args.inference_paths = model.inference_paths  # recorded in the result's settings
    if info.is_main:
        barrier(info)
    return model


def _text_needed(model_path: str) -> None:
    if model_path == "pixels":
        from clipforge.errors import ClipforgeError

        raise ClipforgeError("--model pixels has no text tower: it only works with linear-probe")


def _at_least(value: int, low: int, option: str) -> None:
    from clipforge.errors import ClipforgeError

    if value < low:
        raise ClipforgeError(f"{option} must be at least {low}, got {value}")


def _templates(spec: str | None, dataset: str) -> list[str]:
    from clipforge.evaluation.templates import get_templates, template_sets

    if spec:
        return get_templates(spec)
    return template_sets().get(dataset.split("/")[0], ["a photo of a {c}."])


def _probe_inputs(args: argparse.Namespace):
    """The model, the train/test sets and their features: what every probe-style command starts with."""
    from clipforge.evaluation.probe_data import labelled_features, train_test_sets

    _at_least(args.batch_size, 1, "--batch-size")
    model = _on_inference_path(_load(args.model, args.device, text=bool(getattr(args, "zeroshot_init", False))),
                               args)
    train, test = train_test_sets(args.dataset, args.test, getattr(args, "image_column", "image"),
                                  getattr(args, "label_column", "label"))
    xtr, ytr, _ = labelled_features(model, train, args.batch_size, not args.no_cache, "embed train")
    xte, yte, _ = labelled_features(model, test, args.batch_size, not args.no_cache, "embed test")
    return model, train, test, xtr, ytr, xte, yte


def _save(args, task: str, dataset: str, metrics: dict, settings: dict, label: str = "") -> None:
    from clipforge.engine.distributed import current_dist
    from clipforge.evaluation.results import write_result

    if not current_dist().is_main:
        return
    if getattr(args, "inference_paths", None):
        settings = {**settings, "inference": args.inference_paths}
    path = write_result(args.out, task, args.model, dataset, metrics, settings)
    shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
    print(f"{label}: {json.dumps(shown)}" if label else json.dumps(shown))
    print(f"result written to {path}")


def run_zeroshot(args: argparse.Namespace) -> int:
    _text_needed(args.model)
    from clipforge.data.datasets import load_classification
    from clipforge.errors import ClipforgeError
    from clipforge.evaluation.likelihood_zero_shot import likelihood_zero_shot_task, scores_likelihood
    from clipforge.evaluation.probe_data import warn_missing, warn_skipped
    from clipforge.evaluation.tasks import zero_shot_task
    from clipforge.evaluation.templates import load_classnames
    from clipforge.evaluation.zero_shot import confusion_matrix_png

    _at_least(args.batch_size, 1, "--batch-size")
    model = _load(args.model, args.device, text=False)
    by_likelihood = args.scoring == "likelihood" or not callable(getattr(model, "encode_text", None))
    if not by_likelihood:  # likelihood scoring runs the decoder, which the inference paths leave alone
        model = _on_inference_path(model, args)
    classes, per_class = load_classnames(args.classes) if args.classes else (None, None)
    ds = load_classification(args.dataset, args.split, args.image_column, args.label_column, classes)
    warn_missing(ds)
    templates = per_class or _templates(args.templates, args.dataset)
    if args.ablate_prompts:
        from clipforge.cli.analysis import run_prompt_ablation

        if per_class is not None:
            raise ClipforgeError("--ablate-prompts needs class names and templates, not per-class prompts (--classes)")
        if by_likelihood:
            raise ClipforgeError("--ablate-prompts compares prompt embeddings; this model scores by likelihood")
        return run_prompt_ablation(args, model, ds, templates)
    if by_likelihood:
        if not scores_likelihood(model) or per_class is not None:
            raise ClipforgeError(f"--scoring likelihood: {args.model} cannot score prompts by likelihood"
                                 if per_class is None else "--scoring likelihood takes class names and templates, "
                                 "not per-class prompts (--classes)")
        metrics, logits, targets, skipped = likelihood_zero_shot_task(model, ds, templates, args.batch_size,
                                                                      progress=True)
    else:
        metrics, logits, targets, skipped = zero_shot_task(model, ds, templates, args.batch_size,
                                                           use_cache=not args.no_cache, progress=True)
    warn_skipped(skipped, ds.name)
    if args.confusion:
        confusion_matrix_png(targets, logits.argmax(1), ds.classes, args.confusion)
        print(f"confusion matrix written to {args.confusion}")
    _save(args, "zeroshot_classification", ds.name, metrics,
          {"templates": templates if per_class is None else "per-class prompts", "n_classes": len(ds.classes),
           "n_images": len(targets), "scoring": "likelihood" if by_likelihood else "embedding"})
    return 0


def run_captioning(args: argparse.Namespace) -> int:
    from clipforge.captioning.evaluate import evaluate_captioner
    from clipforge.checkpoints import load
    from clipforge.engine.distributed import DistInfo, default_device
    from clipforge.evaluation.judge import load_judge
    from clipforge.models.generation import GenerationConfig

    _at_least(args.batch_size, 1, "--batch-size")
    if args.limit is not None:
        _at_least(args.limit, 1, "--limit")
    device = default_device(DistInfo(), args.device)
    model = load(args.model).to(device)
    judge = load_judge(args.judge, device) if args.judge else None
    config = GenerationConfig(strategy=args.strategy, num_beams=args.num_beams, max_len=args.max_len)
    out = evaluate_captioner(model, args.dataset, judge, config, args.limit, args.batch_size, args.attribute_images,
                             progress=True)
    for e in out["examples"][:3]:
        print(f"{e['image']}: {e['caption']}  (reference: {e['references'][0] if e['references'] else '-'})")
    _save(args, "captioning", args.dataset, out["metrics"], {**out["settings"], "examples": out["examples"]})
    return 0


def run_generation(args: argparse.Namespace) -> int:
    from clipforge.cli.generate import _load_generator
    from clipforge.engine.distributed import DistInfo, default_device
    from clipforge.evaluation.judge import load_judge
    from clipforge.generation.evaluate import evaluate_generator
    from clipforge.generation.sample import SampleOptions

    _at_least(args.n, 1, "-n")
    model = _load_generator(args.model, args.device)
    judge = load_judge(args.judge, default_device(DistInfo(), args.device))
    options = SampleOptions(n=args.n, steps=args.steps, sampler=args.sampler, guidance=args.guidance,
                            rerank=args.rerank, use_prior=not args.no_prior, seed=args.seed,
                            search=args.search or "none", budget=args.budget)
    m = evaluate_generator(model, args.dataset, judge, options, out_dir=args.out, progress=True,
                           word_edits=args.word_edits)
    for split in ("seen", "heldout"):
        s, c = m[split], m["ceiling"][split]
        print(f"{split:8s} CLIP-score {s['clip_score']:.1f} (real {c['clip_score']:.1f})  R-precision "
              f"{s['r_precision']:.1%}  colour+shape {s['colour_and_shape_acc']:.1%} (real "
              f"{c['colour_and_shape_acc']:.1%})  size {s['size_acc']:.1%}  position {s['position_acc']:.1%}")
    print(f"Frechet distance to real validation images (judge features): {m['frechet_distance']:.3f}")
    for attribute, e in m.get("word_edits", {}).items():
        print(f"{attribute} word edited: drawn {e['changed']:.1%} (before the edit {e['before']:.1%}); other "
              f"attributes as asked {e['kept']:.1%}, as drawn before {e['consistent']:.1%}")
    if "guide_clip_score" in m:
        print(f"the generator's own CLIP scores the same images {m['guide_clip_score']:.1f} (all prompts; the judge's "
              "figures above are the ones to trust)")
    print(f"report: {args.out}/report.html")
    return 0


def run_retrieval(args: argparse.Namespace) -> int:
    _text_needed(args.model)
    from clipforge.data.datasets import load_retrieval
    from clipforge.evaluation.tasks import retrieval_task

    _at_least(args.batch_size, 1, "--batch-size")
    model = _on_inference_path(_load(args.model, args.device), args)
    ds = load_retrieval(args.dataset, args.image_column, args.caption_column)
    metrics, skipped, counts = retrieval_task(model, ds, args.batch_size, use_cache=not args.no_cache, progress=True)
    if skipped:
        print(f"warning: {len(skipped)} unreadable image(s) and their captions left out, e.g. {skipped[0].source}")
    _save(args, "zeroshot_retrieval", ds.name, metrics, {**counts, "n_unreadable_images": len(skipped)})
    return 0


def run_linear_probe(args: argparse.Namespace) -> int:
    from clipforge.evaluation.linear_probe import linear_probe

    model, train, test, xtr, ytr, xte, yte = _probe_inputs(args)
    normalize = (args.normalize or ("no" if model is None else "yes")) == "yes"
    metrics = linear_probe(xtr, ytr, xte, yte, n_classes=len(train.classes), normalize=normalize)
    curve = metrics.pop("c_curve")
    _save(args, "linear_probe", test.name, metrics, {"c_curve": curve, "protocol": "CLIP paper, L-BFGS"})
    return 0


def run_fewshot(args: argparse.Namespace) -> int:
    _text_needed(args.model)
    from clipforge.evaluation.fewshot import few_shot_probe, zero_shot_init_few_shot
    from clipforge.evaluation.zero_shot import zero_shot_classifier

    for k in args.k:
        _at_least(k, 1, "-k")
    if args.pull is not None and args.pull < 0:
        _at_least(args.pull, 0, "--pull")
    model, train, test, xtr, ytr, xte, yte = _probe_inputs(args)
    fewest = int(ytr.bincount().min()) if len(ytr) else 0
    if max(args.k) > fewest:
        print(f"warning: -k {max(args.k)} is more than the {fewest} training images of the smallest class; "
              "such classes use all they have")
    zs = zero_shot_classifier(model, train.classes, _templates(args.templates, args.dataset)) if args.zeroshot_init \
        else None
    for k in args.k:
        metrics = few_shot_probe(xtr, ytr, xte, yte, k, len(train.classes), args.seed)
        _save(args, f"fewshot_{k}", test.name, metrics, {"k": k, "seed": args.seed}, label=f"k={k}")
        if zs is not None:
            metrics = zero_shot_init_few_shot(xtr, ytr, xte, yte, zs, k, args.seed, pull=args.pull)
            _save(args, f"fewshot_{k}_zsinit", test.name, metrics, {"k": k, "seed": args.seed},
                  label=f"k={k}, zero-shot init")
    return 0


def run_overlap(args: argparse.Namespace) -> int:
    _text_needed(args.model)
    import torch

    from clipforge.errors import ClipforgeError
    from clipforge.evaluation.cache import image_features
    from clipforge.evaluation.overlap import overlap_report, pixel_signatures
    from clipforge.evaluation.probe_data import train_test_sets, warn_skipped
    from clipforge.evaluation.zero_shot import zero_shot_logits

    if args.threshold is not None and not -1.0 <= args.threshold <= 1.0:
        raise ClipforgeError(f"--threshold is a cosine similarity, between -1 and 1; got {args.threshold}")
    _at_least(args.batch_size, 1, "--batch-size")
    model = _on_inference_path(_load(args.model, args.device), args)
    train, test = train_test_sets(args.dataset, args.test)
    cached = dict(batch_size=args.batch_size, use_cache=not args.no_cache, progress=False)
    xtr, itr, _ = image_features(model, train.images, **cached)
    xte, ite, skipped = image_features(model, test.images, **cached)
    warn_skipped(skipped, test.name)
    train_images, test_images = [train.images[i] for i in itr], [test.images[i] for i in ite]
    yte = torch.tensor(test.labels)[ite]
    correct = zero_shot_logits(model, xte, test.classes, _templates(args.templates, args.dataset)).argmax(1) == yte
    if args.features == "pixels":
        xtr, xte = pixel_signatures(train_images), pixel_signatures(test_images)
        embed = pixel_signatures
    else:
        embed = lambda paths: image_features(model, paths, args.batch_size, use_cache=False, progress=False)[0]  # noqa: E731
    settings: dict = {"features": args.features}
    threshold = args.threshold
    if threshold is None:
        threshold, table = _calibrated_threshold(train, train_images, xtr, embed, args.plant)
        settings["calibration"] = table
        best = next(r for r in table if r["threshold"] == threshold)
        print(f"threshold {threshold} calibrated on {min(args.plant, len(xtr) // 2)} planted near-duplicates: it "
              f"flags {best['clean_flagged']:.1%} of distinct training images and finds {best['recall']:.1%} of "
              "the planted copies")
        if best["recall"] < 0.8:
            print(f"warning: with --features {args.features} planted near-duplicates look like distinct images "
                  "to this detector; its overlap figures are unreliable" +
                  (" (try --features pixels)" if args.features == "model" else ""))
    metrics = overlap_report(xte, xtr, correct, threshold)
    pairs = metrics.pop("pairs")
    if "acc1_overlap_minus_clean" in metrics:
        m = metrics
        print(f"overlapping images are right {100 * m['acc1_overlap_minus_clean']:+.1f} points more often than clean "
              f"ones ({100 * m['ci_confidence']:g}% CI {100 * m['overlap_minus_clean_ci_low']:+.1f} to "
              f"{100 * m['overlap_minus_clean_ci_high']:+.1f}; one-sided binomial p = "
              f"{m['p_value_overlap_higher']:.3g}); "
              f"all minus clean: {100 * m['acc1_all_minus_clean']:+.2f} points")
    _save(args, "overlap", test.name, metrics, {"threshold": threshold, **settings, "flagged_pairs": pairs[:1000]})
    return 0


def _calibrated_threshold(train, train_images: list[str], xtr, embed, plant: int):
    """Plant near-duplicates of part of the training set; hold another part out as known-distinct images."""
    import tempfile

    import torch

    from clipforge.errors import ClipforgeError
    from clipforge.evaluation.overlap import calibrate_threshold, nearest_train, plant_duplicates

    n = min(plant, len(xtr) // 2)
    if n < 5:
        raise ClipforgeError(f"{train.name}: too few training images ({len(xtr)}) to calibrate --threshold; give one")
    order = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(0))
    held, reference = order[:n], order[n:]
    with tempfile.TemporaryDirectory(prefix="clipforge-planted-") as tmp:
        planted = embed(plant_duplicates([train_images[int(r)] for r in reference[:n]], tmp))
    _, planted_sims = nearest_train(planted, xtr[reference])
    _, clean_sims = nearest_train(xtr[held], xtr[reference])
    return calibrate_threshold(planted_sims, clean_sims)


def run_report(args: argparse.Namespace) -> int:
    from clipforge.evaluation.results import report_tables

    md, csv_text = report_tables(args.folder)
    print(md)
    if args.csv:
        Path(args.csv).write_text(csv_text)
        print(f"CSV written to {args.csv}")
    return 0


def run_classify(args: argparse.Namespace) -> int:
    import torch

    from clipforge.evaluation.embed import embed_images
    from clipforge.evaluation.templates import get_templates, load_classnames
    from clipforge.evaluation.zero_shot import zero_shot_logits

    _at_least(args.top, 1, "--top")
    model = _on_inference_path(_load(args.model, args.device), args)
    classes, per_class = load_classnames(args.labels)
    templates = per_class or get_templates(args.templates)
    feats, idx, skipped = embed_images(model, args.images)
    for s in skipped:
        print(f"{s.source}: skipped ({s.detail or s.reason})")
    if not len(idx):
        from clipforge.errors import ClipforgeError

        raise ClipforgeError(f"none of the {len(args.images)} image(s) could be read")
    probs = zero_shot_logits(model, feats, classes, templates).softmax(dim=-1)
    top = min(args.top, len(classes))
    width = max(len(c) for c in classes)
    for row, i in zip(probs, idx.tolist()):
        values, order = torch.topk(row, top)
        print(args.images[i])
        for v, o in zip(values.tolist(), order.tolist()):
            print(f"  {classes[o]:<{width}}  {v:6.1%}")
    return 0
