"""Evaluation metrics against hand-computed values; datasets, probes, overlap, results, CLI."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import clipforge
from clipforge.cli.main import main
from clipforge.data.datasets import load_classification, load_retrieval
from clipforge.data.pairs import DataError
from clipforge.errors import ClipforgeError
from clipforge.evaluation import classification_metrics, retrieval_metrics, zero_shot_classifier
from clipforge.evaluation.fewshot import few_shot_probe, sample_k_shot
from clipforge.evaluation.linear_probe import choose_c, linear_probe
from clipforge.evaluation.overlap import overlap_report
from clipforge.evaluation.results import report_tables, write_result
from clipforge.evaluation.templates import get_templates, load_classnames, template_sets
from conftest import PEERS


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPFORGE_CACHE", str(tmp_path / "cache"))


# --- classification metrics -----------------------------------------------------------------

def test_classification_metrics_by_hand() -> None:
    logits = torch.tensor([
        [0.9, 0.1, 0.0, 0.0, 0.0, 0.0],   # true 0, ranked 0 first: top-1 hit
        [0.3, 0.2, 0.9, 0.8, 0.7, 0.6],   # true 1, rank 6: top-5 miss
        [0.5, 0.1, 0.2, 0.3, 0.4, 0.0],   # true 2, rank 4: top-5 hit
        [0.0, 0.0, 0.1, 0.9, 0.0, 0.0],   # true 3: hit
        [0.0, 0.0, 0.9, 0.1, 0.0, 0.0],   # true 3: miss (rank 2)
    ])
    targets = torch.tensor([0, 1, 2, 3, 3])
    m = classification_metrics(logits, targets)
    assert m["acc1"] == pytest.approx(2 / 5)
    assert m["acc5"] == pytest.approx(4 / 5)
    # per-class recall over classes with test samples (0, 1, 2, 3; classes 4 and 5 have none):
    assert m["mean_per_class_recall"] == pytest.approx((1 + 0 + 0 + 0.5) / 4)


def test_fewer_than_five_classes_has_no_acc5() -> None:
    m = classification_metrics(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]), torch.tensor([0, 1, 1]))
    assert "acc5" not in m
    assert m["acc1"] == pytest.approx(2 / 3) and m["mean_per_class_recall"] == pytest.approx(0.75)


# --- retrieval ------------------------------------------------------------------------------

def _unit(*vs):
    return F.normalize(torch.tensor(vs, dtype=torch.float32), dim=-1)


def test_retrieval_with_several_captions_per_image_by_hand() -> None:
    images = _unit([1, 0, 0], [0, 1, 0], [0, 0, 1])
    # captions 0,1 -> image 0; caption 2 -> image 1; caption 3 -> image 2
    texts = _unit([1, 0.1, 0], [0, 1, 0.2], [0, 1, 0], [0.9, 0, 1])
    m = retrieval_metrics(images, texts, [0, 0, 1, 2], ks=(1, 2))
    # text->image ranks: c0 -> img0 first (hit@1); c1 -> img1 first, img0 third... rank 3 (miss@1,@2);
    # c2 -> img1 first (hit); c3 -> img2 (0.74) above img0 (0.67): hit.
    assert m["image_retrieval_recall@1"] == pytest.approx(3 / 4)
    assert m["image_retrieval_recall@2"] == pytest.approx(3 / 4)
    # image->text: img0's best caption c0 ranks first; img1: c2 (1.0) first; img2: c3 first.
    assert m["text_retrieval_recall@1"] == pytest.approx(1.0)
    assert m["image_retrieval_median_rank"] == 1.0


def test_retrieval_ties_are_ordered_by_index() -> None:
    images = _unit([1, 0], [1, 0])  # two identical images
    texts = _unit([1, 0], [1, 0])
    m = retrieval_metrics(images, texts, [0, 1], ks=(1,))
    # text 0's image (index 0) wins the tie, text 1's image (index 1) loses it.
    assert m["image_retrieval_recall@1"] == pytest.approx(0.5)
    assert m["text_retrieval_recall@1"] == pytest.approx(0.5)


def test_retrieval_blocks_do_not_change_results() -> None:
    g = torch.Generator().manual_seed(0)
    images, texts = F.normalize(torch.randn(50, 8, generator=g), dim=-1), F.normalize(torch.randn(120, 8, generator=g),
                                                                                      dim=-1)
    t2i = torch.randint(0, 50, (120,), generator=g)
    assert retrieval_metrics(images, texts, t2i, block=7) == retrieval_metrics(images, texts, t2i)


# --- zero-shot on a real (tiny) model -------------------------------------------------------

def test_zero_shot_matches_hand_computed_logits() -> None:
    from clipforge.tokenizer import BPETokenizer

    model = clipforge.load(PEERS / "hf_clip_tiny")
    model.tokenizer = lambda texts: BPETokenizer(context_length=77)(texts).clamp(max=999)
    classes, templates = ["cat", "dog", "bird"], ["a photo of a {c}.", "a {c}"]
    weights = zero_shot_classifier(model, classes, templates)
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        img = F.normalize(model.encode_image(images), dim=-1)
        by_hand = []
        for c in classes:
            emb = F.normalize(model.encode_text(model.tokenizer([t.replace("{c}", c) for t in templates])), dim=-1)
            by_hand.append(F.normalize(emb.mean(0), dim=-1))
        logits = img @ torch.stack(by_hand).T
    torch.testing.assert_close(img @ weights.T, logits)
    assert torch.equal((img @ weights.T).argmax(1), logits.argmax(1))


# --- datasets, class names, templates -------------------------------------------------------

def _folder(root, n=3):
    for c, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (16, 16), colour).save(root / c / f"{i}.png")
    return root


def test_folder_and_csv_datasets(tmp_path) -> None:
    ds = load_classification(str(_folder(tmp_path / "f")))
    assert ds.classes == ["blue", "red"] and len(ds) == 6 and sorted(set(ds.labels)) == [0, 1]
    (tmp_path / "l.csv").write_text("image,label\nf/red/0.png,red\nf/red/9.png,red\nf/blue/0.png,blue\n")
    ds = load_classification(str(tmp_path / "l.csv"))
    assert len(ds) == 2 and ds.missing == [str(tmp_path / "f/red/9.png")]
    with pytest.raises(DataError, match=r"label\(s\) \['red'\] in column 'label' are not among"):
        load_classification(str(tmp_path / "l.csv"), classes=["blue", "green"])


def test_digits_builtin_is_split_and_stratified() -> None:
    train, test = load_classification("digits", "train"), load_classification("digits", "test")
    assert len(train) + len(test) == 1797 and not set(train.images) & set(test.images)
    assert len(set(test.labels)) == 10 and Image.open(test.images[0]).size == (32, 32)


def test_retrieval_dataset_groups_captions_by_image(tmp_path) -> None:
    (tmp_path / "r.csv").write_text("image,caption\na.png,one\nb.png,two\na.png,three\n")
    ds = load_retrieval(str(tmp_path / "r.csv"))
    assert len(ds.images) == 2 and ds.captions == ["one", "two", "three"] and ds.text_to_image == [0, 1, 0]


def test_class_name_files(tmp_path) -> None:
    assert load_classnames("cat, dog,bird") == (["cat", "dog", "bird"], None)
    (tmp_path / "c.txt").write_text("cat\ndog\n\n")
    assert load_classnames(str(tmp_path / "c.txt"))[0] == ["cat", "dog"]
    (tmp_path / "c.json").write_text(json.dumps({"cat": ["a cat", "a kitten"], "dog": ["a dog"]}))
    assert load_classnames(str(tmp_path / "c.json")) == (["cat", "dog"], [["a cat", "a kitten"], ["a dog"]])
    (tmp_path / "c.yaml").write_text("- cat\n")
    with pytest.raises(ClipforgeError, match=r"unknown class-name file format \.yaml"):
        load_classnames(str(tmp_path / "c.yaml"))


def test_template_sets() -> None:
    sets = template_sets()
    assert len(sets["imagenet1k"]) == 80 and len(sets["cifar10"]) == 18
    assert get_templates("a sketch of a {c}") == ["a sketch of a {c}"]
    with pytest.raises(ClipforgeError, match="unknown template set"):
        get_templates("imagenet-21k")


# --- probes, few-shot, overlap --------------------------------------------------------------

def _blobs(n_per: int, seed: int, classes: int = 3, dim: int = 6):
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(classes, dim) * 3
    y = torch.arange(classes).repeat_interleave(n_per)
    return centres[y] + 0.5 * torch.randn(len(y), dim, generator=g), y


def test_linear_probe_protocol() -> None:
    xtr, ytr = _blobs(40, 0)
    xte, yte = _blobs(20, 1)
    m = linear_probe(xtr, ytr, xte, yte)
    assert m["lp_acc1"] > 0.95 and "lp_acc5" not in m and m["n_train"] == 120
    cs = [c for c, _ in m["c_curve"]]
    assert min(cs) == 1e-6 and max(cs) == 1e6 and len(cs) > 13  # coarse grid + refinement
    # C is chosen on the validation split only: labels of the test set do not change it.
    m2 = linear_probe(xtr, ytr, xte, yte[torch.randperm(len(yte))])
    assert m2["C"] == m["C"]


def test_choose_c_prefers_the_best_validation_accuracy() -> None:
    xtr, ytr = _blobs(30, 0)
    xva, yva = _blobs(10, 2)
    c, curve = choose_c(xtr.numpy(), ytr.numpy(), xva.numpy(), yva.numpy())
    assert max(acc for _, acc in curve) == dict(curve)[c]


def test_few_shot_uses_k_training_samples_per_class_only() -> None:
    xtr, ytr = _blobs(40, 0)
    idx = sample_k_shot(ytr, 4, seed=3)
    assert torch.bincount(ytr[idx]).tolist() == [4, 4, 4]
    assert torch.equal(idx, sample_k_shot(ytr, 4, seed=3))
    xte, yte = _blobs(20, 1)
    m = few_shot_probe(xtr, ytr, xte, yte, k=4, n_classes=3)
    assert m["n_train"] == 12 and m["lp_acc1"] > 0.8


def test_overlap_flags_near_duplicates() -> None:
    train = F.normalize(torch.eye(4, 8), dim=-1)
    test = F.normalize(torch.stack([train[0] + 0.01, torch.ones(8), train[2]]), dim=-1)
    correct = torch.tensor([True, False, True])
    m = overlap_report(test, train, correct, threshold=0.95)
    assert m["n_overlap"] == 2 and [p[:2] for p in m["pairs"]] == [(0, 0), (2, 2)]
    assert m["acc1_overlap"] == 1.0 and m["acc1_clean"] == 0.0


# --- results and the command line -----------------------------------------------------------

def test_results_and_report(tmp_path) -> None:
    write_result(tmp_path, "zeroshot_classification", "m1", "digits/test", {"acc1": 0.5, "acc5": 0.9})
    write_result(tmp_path, "linear_probe", "m1", "digits/test", {"lp_acc1": 0.75})
    md, csv_text = report_tables(tmp_path)
    assert "| task | model | dataset | acc1 | acc5 | lp_acc1 |" in md
    assert "zeroshot_classification,m1,digits/test,0.5000,0.9000," in csv_text


def test_classify_cli_and_missing_tokenizer(tmp_path, capsys) -> None:
    model = clipforge.load(PEERS / "openclip_vit_tiny")
    model.tokenizer = None
    clipforge.save(model, tmp_path / "m")
    Image.new("RGB", (40, 40), (200, 10, 10)).save(tmp_path / "x.png")
    assert main(["classify", "--model", str(tmp_path / "m"), "--labels", "cat,dog", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    # Says why (a vocabulary that is not OpenAI's BPE) and what works, not a file no loader reads.
    assert "no tokenizer is known" in err and "1000 tokens" in err and "tokenizer.json" not in err


def test_classify_cli_prints_probabilities(tmp_path, capsys) -> None:
    model = clipforge.build("tiny-vit-32")
    clipforge.save(model, tmp_path / "m")
    Image.new("RGB", (40, 40), (200, 10, 10)).save(tmp_path / "x.png")
    (tmp_path / "bad.png").write_bytes(b"nope")
    assert main(["classify", "--model", str(tmp_path / "m"), "--labels", "cat,dog,bird", "--top", "2",
                 str(tmp_path / "x.png"), str(tmp_path / "bad.png")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any("bad.png: skipped" in line for line in out)
    i = out.index(str(tmp_path / "x.png"))
    assert len(out[i + 1 : i + 3]) == 2 and all("%" in line for line in out[i + 1 : i + 3])


def test_eval_cli_zeroshot_and_report(tmp_path, capsys) -> None:
    model = clipforge.build("tiny-vit-32")
    clipforge.save(model, tmp_path / "m")
    _folder(tmp_path / "f")
    args = ["eval", "zeroshot", "--model", str(tmp_path / "m"), "--dataset", str(tmp_path / "f"), "--out",
            str(tmp_path / "res"), "--confusion", str(tmp_path / "c.png"), "--templates", "cifar10"]
    assert main(args) == 0
    assert main(args) == 0  # second run reads cached features
    assert (tmp_path / "c.png").stat().st_size > 1000
    assert main(["eval", "report", str(tmp_path / "res")]) == 0
    assert "zeroshot_classification" in capsys.readouterr().out
    assert main(["eval", "zeroshot", "--model", "pixels", "--dataset", "digits"]) == 2


def test_zero_shot_initialised_few_shot_starts_from_the_zero_shot_classifier() -> None:
    from clipforge.evaluation.fewshot import zero_shot_init_few_shot

    xtr, ytr = _blobs(40, 0)
    xte, yte = _blobs(20, 1)
    centres = F.normalize(torch.eye(3, 6), dim=-1)  # a perfect zero-shot classifier for these blobs
    m = zero_shot_init_few_shot(xtr, ytr, xte, yte, centres, k=1)
    assert m["lp_acc1"] > 0.95 and m["zero_shot_init"]


def test_classification_from_shards_with_cls(tmp_path) -> None:
    import io

    import webdataset as wds

    with wds.TarWriter(str(tmp_path / "s-000.tar")) as sink:
        for i, colour in enumerate([(255, 0, 0), (0, 0, 255), (255, 0, 0)]):
            buf = io.BytesIO()
            Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
            sink.write({"__key__": f"{i:03d}", "png": buf.getvalue(), "cls": str(i % 2)})
    ds = load_classification(str(tmp_path / "s-000.tar"), classes=["red", "blue"])
    assert ds.labels == [0, 1, 0] and all(Image.open(p).size == (8, 8) for p in ds.images)


# --- every input: empty and unreadable datasets, bad options ------------------------------------

@pytest.fixture
def model_dir(tmp_path):
    clipforge.save(clipforge.build("tiny-vit-32"), tmp_path / "m")
    return str(tmp_path / "m")


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("clipforge: error:") and err.count("\n") == 1, err
    for n in needles:
        assert n in err, err
    return err


def test_empty_or_unreadable_datasets_are_refused_never_scored_nan(tmp_path, model_dir, capsys) -> None:
    for c in ("red", "blue"):  # class folders without images
        (tmp_path / "empty_classes" / c).mkdir(parents=True)
    (tmp_path / "header_only.csv").write_text("image,label\n")
    (tmp_path / "all_missing.csv").write_text("image,label\nnope/1.png,red\nnope/2.png,blue\n")
    (tmp_path / "broken").mkdir()
    for c in ("red", "blue"):
        (tmp_path / "broken" / c).mkdir()
        (tmp_path / "broken" / c / "x.png").write_bytes(b"not a png")
    out = tmp_path / "res"
    cases = {"empty_classes": "hold no images", "header_only.csv": "no rows below the header",
             "all_missing.csv": "none of its 2 images exist", "broken": "none of its 2 images could be read"}
    for name, message in cases.items():
        assert main(["eval", "zeroshot", "--model", model_dir, "--dataset", str(tmp_path / name),
                     "--out", str(out)]) == 2
        _one_line_error(capsys, name, message)
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "pairs_header_only.csv").write_text("image,caption\n")
    for name in ("empty_folder", "pairs_header_only.csv"):
        assert main(["eval", "retrieval", "--model", model_dir, "--dataset", str(tmp_path / name),
                     "--out", str(out)]) == 2
        _one_line_error(capsys, name, "no image-caption pairs")
    assert not out.exists() or not list(out.glob("*.json"))  # no result written, NaN or otherwise


def test_a_nan_metric_is_never_written(tmp_path) -> None:
    with pytest.raises(ClipforgeError, match="acc1 are not finite"):
        write_result(tmp_path, "zeroshot_classification", "m", "d", {"acc1": float("nan"), "acc5": 0.5})
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.parametrize(("argv", "message"), [
    (["eval", "fewshot", "--dataset", "digits", "-k", "0"], "-k must be at least 1, got 0"),
    (["eval", "fewshot", "--dataset", "digits", "-k", "-3"], "-k must be at least 1, got -3"),
    (["eval", "overlap", "--dataset", "digits", "--threshold", "1.5"], "--threshold is a cosine similarity"),
    (["eval", "zeroshot", "--dataset", "digits", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["classify", "--labels", "a,b", "--top", "-1", "x.png"], "--top must be at least 1, got -1"),
    (["classify", "--labels", "a,b", "--top", "0", "x.png"], "--top must be at least 1, got 0"),
])
def test_bad_options_are_refused_in_one_line(tmp_path, model_dir, capsys, argv, message) -> None:
    head = 2 if argv[0] == "eval" else 1
    out = ["--out", str(tmp_path / "res")] if argv[0] == "eval" else []
    assert main([*argv[:head], "--model", model_dir, *out, *argv[head:]]) == 2
    _one_line_error(capsys, message)
    assert not (tmp_path / "res").exists()


def test_classify_fails_when_no_image_could_be_read(tmp_path, model_dir, capsys) -> None:
    (tmp_path / "bad.png").write_bytes(b"nope")
    assert main(["classify", "--model", model_dir, "--labels", "a,b", str(tmp_path / "bad.png"),
                 str(tmp_path / "missing.png")]) == 2
    captured = capsys.readouterr()
    assert "bad.png: skipped" in captured.out and "none of the 2 image(s) could be read" in captured.err


def test_folder_class_names_read_as_words(tmp_path) -> None:
    for folder in ("red_circle", "blue-square"):
        (tmp_path / "f" / folder).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "f" / folder / "0.png")
    ds = load_classification(str(tmp_path / "f"))
    assert ds.classes == ["blue square", "red circle"] and ds.labels == [0, 1]
    # Given class names may use either spelling.
    ds = load_classification(str(tmp_path / "f"), classes=["red circle", "blue_square"])
    assert ds.labels == [1, 0]


def test_retrieval_counts_what_was_evaluated(tmp_path, model_dir, capsys) -> None:
    rows = ["image,caption"]
    for i in range(4):
        Image.new("RGB", (16, 16), (60 * i, 0, 0)).save(tmp_path / f"{i}.png")
        rows += [f"{i}.png,a red square {i}", f"{i}.png,another caption {i}"]
    (tmp_path / "bad.png").write_bytes(b"broken")
    rows += ["bad.png,an unreadable image", "missing.png,a missing image"]
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    assert main(["eval", "retrieval", "--model", model_dir, "--dataset", str(tmp_path / "pairs.csv"),
                 "--out", str(tmp_path / "res")]) == 0
    (result,) = (json.loads(p.read_text()) for p in (tmp_path / "res").glob("*.json"))
    assert result["settings"]["n_images"] == 4 and result["settings"]["n_captions"] == 8
    assert result["settings"]["n_unreadable_images"] == 2


def test_fewshot_lines_name_their_k(tmp_path, model_dir, capsys) -> None:
    _folder(tmp_path / "train", n=4)
    _folder(tmp_path / "test", n=2)
    assert main(["eval", "fewshot", "--model", model_dir, "--dataset", str(tmp_path / "train"), "--test",
                 str(tmp_path / "test"), "-k", "1", "2", "500", "--out", str(tmp_path / "res")]) == 0
    out = capsys.readouterr().out
    assert "-k 500 is more than the 4 training images of the smallest class" in out
    assert any(line.startswith("k=1: {") for line in out.splitlines())
    assert any(line.startswith("k=2: {") for line in out.splitlines())


def _zs_setting(zs_quality: str):
    """Six Gaussian classes in 16-d; a zero-shot classifier near the class means ("good") or random ("bad")."""
    classes, dim = 6, 16
    centres = F.normalize(torch.randn(classes, dim, generator=torch.Generator().manual_seed(5)), dim=-1)

    def draw(n_per: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        y = torch.arange(classes).repeat_interleave(n_per)
        return centres[y] + 0.35 * torch.randn(len(y), dim, generator=g), y

    noise = torch.randn(classes, dim, generator=torch.Generator().manual_seed(9 if zs_quality == "good" else 7))
    zs = F.normalize(centres + 0.3 * noise if zs_quality == "good" else noise, dim=-1)
    return (*draw(16, 0), *draw(20, 1), zs)


@pytest.mark.slow
@pytest.mark.parametrize("zs_quality", ["good", "bad"])
def test_zero_shot_init_is_never_worse_than_both_ends(zs_quality: str) -> None:
    from clipforge.evaluation.fewshot import zero_shot_init_few_shot

    xtr, ytr, xte, yte, zs = _zs_setting(zs_quality)
    zs_acc = classification_metrics(F.normalize(xte, dim=-1) @ zs.T, yte)["acc1"]
    for k in (1, 4, 16):
        plain = few_shot_probe(xtr, ytr, xte, yte, k, 6)["lp_acc1"]
        init = zero_shot_init_few_shot(xtr, ytr, xte, yte, zs, k)
        assert init["lp_acc1"] >= min(zs_acc, plain) - 0.02, (k, init, zs_acc, plain)
        if k == 16:  # enough examples: a poor zero-shot classifier is left behind (the old default pull kept it)
            assert init["lp_acc1"] >= plain - 0.05
    if zs_quality == "bad":
        assert zero_shot_init_few_shot(xtr, ytr, xte, yte, zs, 16)["lp_acc1"] > zs_acc + 0.5


def test_overlap_threshold_calibration_separates_planted_duplicates() -> None:
    from clipforge.evaluation.overlap import calibrate_threshold

    g = torch.Generator().manual_seed(0)
    planted = 0.985 + 0.01 * torch.rand(100, generator=g)  # near-duplicates: 0.985-0.995
    clean = 0.94 + 0.035 * torch.rand(100, generator=g)    # distinct images of a small model: 0.94-0.975
    threshold, table = calibrate_threshold(planted, clean)
    assert 0.975 <= threshold <= 0.985
    row = next(r for r in table if r["threshold"] == threshold)
    assert row["recall"] == 1.0 and row["clean_flagged"] == 0.0 and row["precision"] == 1.0
    at_095 = next(r for r in table if r["threshold"] == 0.95)
    assert at_095["clean_flagged"] > 0.5  # the old fixed default flagged most clean images here


def test_overlap_cli_calibrates_and_records_the_sweep(tmp_path, model_dir, capsys) -> None:
    assert main(["eval", "overlap", "--model", model_dir, "--dataset", "digits", "--plant", "40",
                 "--out", str(tmp_path / "res")]) == 0
    out = capsys.readouterr().out
    assert "calibrated on 40 planted near-duplicates" in out
    (result,) = (json.loads(p.read_text()) for p in (tmp_path / "res").glob("*.json"))
    table = result["settings"]["calibration"]
    assert {"threshold", "precision", "recall", "clean_flagged"} <= set(table[0])
    assert result["settings"]["threshold"] in [r["threshold"] for r in table]


def test_device_option(tmp_path, model_dir, capsys) -> None:
    Image.new("RGB", (40, 40), (200, 10, 10)).save(tmp_path / "x.png")
    assert main(["classify", "--model", model_dir, "--labels", "cat,dog", "--device", "cpu",
                 str(tmp_path / "x.png")]) == 0
    assert main(["classify", "--model", model_dir, "--labels", "cat,dog", "--device", "toaster",
                 str(tmp_path / "x.png")]) == 2
    _one_line_error(capsys, "device 'toaster' is not a device")
    if not torch.cuda.is_available():
        assert main(["classify", "--model", model_dir, "--labels", "cat,dog", "--device", "cuda",
                     str(tmp_path / "x.png")]) == 2
        _one_line_error(capsys, "CUDA is not available")
