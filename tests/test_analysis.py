"""The CLIP paper's analyses: prompt ablation, typographic attacks, the overlap effect's statistics."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

import clipforge
from clipforge.analysis.prompts import prompt_ablation
from clipforge.analysis.typographic import (
    TextStyle,
    attack_metrics,
    attack_plan,
    nonsense_word,
    render_text,
    typographic_attack,
)
from clipforge.cli.main import main
from clipforge.errors import ConfigError
from clipforge.evaluation.overlap import overlap_effect
from clipforge.evaluation.zero_shot import classification_metrics, zero_shot_logits

# --- typographic attacks -----------------------------------------------------------------------


def _grey(size: int = 64) -> Image.Image:
    return Image.new("RGB", (size, size), (100, 120, 140))


def test_render_text_draws_where_asked_and_opacity_zero_draws_nothing() -> None:
    img = _grey()
    changed = lambda out: np.abs(np.asarray(out, dtype=int) - np.asarray(img, dtype=int)).sum(-1) > 0  # noqa: E731
    assert not changed(render_text(img, "dog", TextStyle(opacity=0.0))).any()
    for position, rows in (("top", slice(0, 24)), ("bottom", slice(40, 64)), ("centre", slice(18, 46))):
        mask = changed(render_text(img, "dog", TextStyle(position=position)))
        assert mask.sum() > 50, position
        inside = mask[rows].sum()
        assert inside / mask.sum() > 0.95, (position, inside, mask.sum())
    # Half opacity moves pixels half way (the fill is white, the outline black).
    full = np.asarray(render_text(img, "dog", TextStyle(outline="")), dtype=float)
    half = np.asarray(render_text(img, "dog", TextStyle(outline="", opacity=0.5)), dtype=float)
    base = np.asarray(img, dtype=float)
    m = changed(Image.fromarray(full.astype(np.uint8)))
    np.testing.assert_allclose((half - base)[m], 0.5 * (full - base)[m], atol=1.5)


def test_render_text_shrinks_a_long_name_to_fit_and_falls_back_to_pillows_font() -> None:
    img = _grey(96)
    out = render_text(img, "blue hexagon", TextStyle(size=0.5))
    diff = np.abs(np.asarray(out, dtype=int) - np.asarray(img, dtype=int)).sum(-1) > 0
    cols = np.where(diff.any(0))[0]
    # Unshrunk, 48 px text is about 370 px wide and would run off both sides; shrunk, it stays inside.
    assert cols.min() > 0 and cols.max() < 95 and diff.sum() > 20
    img = _grey(48)
    # No such font: Pillow's own font, still drawn; a missing font *file* is an error.
    assert (np.asarray(render_text(img, "cat", TextStyle(font="no-such-font"))) != np.asarray(img)).any()
    with pytest.raises(ConfigError, match="missing.ttf"):
        render_text(img, "cat", TextStyle(font="/nope/missing.ttf"))
    with pytest.raises(ConfigError, match="opacity"):
        TextStyle(opacity=2.0)


def test_attack_plan_writes_a_wrong_class_and_a_word_that_is_no_class() -> None:
    classes = ["cat", "dog", "bird", "fish"]
    targets = [0, 1, 2, 3] * 25
    plan = attack_plan(targets, classes, seed=3)
    assert plan == attack_plan(targets, classes, seed=3)
    assert all(w != t for (w, _), t in zip(plan, targets))
    assert {w for w, _ in plan} == {0, 1, 2, 3}
    assert all(word not in classes and len(word) == max(3, len(classes[w])) for w, word in plan)
    assert nonsense_word(3, random.Random(0), avoid=["abc"]) != "abc"
    with pytest.raises(ConfigError, match="two classes"):
        attack_plan([0], ["cat"])


def test_attack_metrics_on_known_numbers() -> None:
    t = torch.tensor([0, 1, 2, 3])
    m = attack_metrics(pred_clean=torch.tensor([0, 1, 2, 0]), pred_attack=torch.tensor([3, 1, 0, 0]),
                       pred_control=torch.tensor([0, 1, 2, 1]), targets=t, written=torch.tensor([3, 0, 0, 1]))
    assert m["acc1_clean"] == 0.75 and m["acc1_attacked"] == 0.25 and m["acc1_control"] == 0.75
    assert m["drop"] == 0.5 and m["drop_control"] == 0.0
    assert m["attack_success"] == 0.5  # images 0 and 2 flipped to the written class
    assert m["attack_success_on_correct"] == pytest.approx(2 / 3)  # of the three right without text
    assert m["control_success"] == 0.25  # image 3 lands on class 1 anyway


def test_typographic_attack_end_to_end_skips_a_bad_file(tmp_path, capsys) -> None:
    model = clipforge.build("tiny-vit-32")
    clipforge.save(model, tmp_path / "m")
    for c, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 40), colour).save(tmp_path / "data" / c / f"{i}.png")
    (tmp_path / "data" / "red" / "bad.png").write_bytes(b"not a png")
    r = typographic_attack(model, [str(p) for p in sorted((tmp_path / "data").rglob("*.png"))],
                           [1, 1, 1, 1, 0, 0, 0][:7], ["blue", "red"], ["a {c} square"], keep=2)
    assert r["metrics"]["n_images"] == 6 and len(r["skipped"]) == 1 and len(r["examples"]) == 2
    assert all(e["written"] != e["label"] for e in r["examples"])
    code = main(["eval", "typographic", "--model", str(tmp_path / "m"), "--dataset", str(tmp_path / "data"),
                 "--out", str(tmp_path / "out"), "--position", "top", "--no-cache"])
    assert code == 0
    out = capsys.readouterr().out
    assert "unreadable image(s) left out" in out and "nonsense word" in out
    doc = json.loads(next((tmp_path / "out").glob("typographic_attack__*.json")).read_text())
    assert doc["metrics"]["n_images"] == 6 and doc["settings"]["style"]["position"] == "top"
    report = next((tmp_path / "out").glob("typographic__*"))
    assert (report / "typographic.png").is_file() and (report / "typographic.md").is_file()
    assert len(list((report / "attacked").glob("*.png"))) == 6
    assert "data:image/png;base64" in (report / "typographic.html").read_text()
    assert main(["eval", "typographic", "--model", str(tmp_path / "m"), "--dataset", str(tmp_path / "data"),
                 "--opacity", "3"]) == 2
    assert "opacity must be in [0, 1]" in capsys.readouterr().err


# --- prompt ablation ---------------------------------------------------------------------------


def test_prompt_ablation_equals_zero_shot_with_each_prompt_set() -> None:
    """Every row against the zero-shot classifier built the slow way for that prompt set."""
    model = clipforge.build("tiny-vit-32")
    classes, templates = ["cat", "dog", "bird"], ["a photo of a {c}.", "a {c}", "{c}!"]
    feats = torch.nn.functional.normalize(torch.randn(30, model.config.embed_dim,
                                                      generator=torch.Generator().manual_seed(0)), dim=-1)
    targets = torch.arange(30) % 3
    r = prompt_ablation(model, feats, targets, classes, templates, one="a {c}")

    def slow(ts):
        return classification_metrics(zero_shot_logits(model, feats, classes, ts), targets)

    assert r["bare"] == slow(["{c}"]) and r["one_template"] == slow(["a {c}"]) and r["ensemble"] == slow(templates)
    assert [s["template"] for s in r["single"]] == templates
    assert all({k: v for k, v in s.items() if k != "template"} == slow([s["template"]]) for s in r["single"])


def test_ablate_prompts_cli_writes_json_plot_and_summary(tmp_path, capsys) -> None:
    model = clipforge.build("tiny-vit-32")
    clipforge.save(model, tmp_path / "run" / "model")
    for c, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        (tmp_path / "data" / c).mkdir(parents=True)
        Image.new("RGB", (40, 40), colour).save(tmp_path / "data" / c / "0.png")
    assert main(["eval", "zeroshot", "--ablate-prompts", "--model", str(tmp_path / "run" / "model"),
                 "--dataset", str(tmp_path / "data"), "--templates", "imagenet1k", "--out", str(tmp_path / "o"),
                 "--no-cache"]) == 0
    assert "ensemble of 80 templates" in capsys.readouterr().out
    doc = json.loads(next((tmp_path / "o").glob("prompt_ablation__*.json")).read_text())
    assert set(doc["metrics"]) >= {"bare", "one_template", "ensemble", "gain_total", "single_min"}
    assert len(doc["settings"]["single"]) == 80
    assert (tmp_path / "o" / "prompt_ablation__run__data.png").is_file()


# --- the overlap effect ------------------------------------------------------------------------


def test_overlap_effect_interval_and_test_on_closed_forms() -> None:
    """Clopper-Pearson's ends have closed forms at k = 0 and k = n; the one-sided binomial p-value
    at k = n is p0^n."""
    n, a = 10, 0.005
    e = overlap_effect(0, n, clean_accuracy=0.2)
    assert e["overlap_minus_clean_ci_low"] == pytest.approx(-0.2)
    assert e["overlap_minus_clean_ci_high"] == pytest.approx(1 - (a / 2) ** (1 / n) - 0.2, rel=1e-6)
    e = overlap_effect(n, n, clean_accuracy=0.6)
    assert e["overlap_minus_clean_ci_low"] == pytest.approx((a / 2) ** (1 / n) - 0.6, rel=1e-6)
    assert e["p_value_overlap_higher"] == pytest.approx(0.6 ** n)
    assert e["acc1_overlap_minus_clean"] == pytest.approx(0.4)


# --- class-design audit ------------------------------------------------------------------------


def test_class_audit_counts_and_chi_square_by_hand() -> None:
    from clipforge.analysis.class_audit import class_audit

    # One-hot features: image i points at axis k; classes 0, 1 are axes 0, 1, the added class axis 2.
    axes = [0, 0, 2, 2, 1, 1, 1, 2]
    feats = torch.eye(3)[axes]
    targets = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    groups = ["a", "a", "b", "b", "a", "a", "b", "b"]
    r = class_audit(feats, targets, torch.eye(3)[:2], torch.eye(3)[2:], ["cat", "dog"], ["thing"], groups)
    # Before, images on the added axis score 0 for both classes and go to the first (cat): 7 of 8
    # right (the dog on axis 2 is wrong). After, the added class takes all three: 5 of 8.
    assert r["acc1_before"] == pytest.approx(7 / 8) and r["acc1_after"] == pytest.approx(5 / 8)
    assert r["absorbed"] == {"cat": {"thing": 2}, "dog": {"thing": 1}} and r["absorbed_fraction"] == 3 / 8
    assert r["groups"]["a"]["absorbed_fraction"] == 0 and r["groups"]["b"]["absorbed_fraction"] == 0.75
    # Pearson's chi-square on [[0, 4], [3, 1]] (absorbed, not) by hand.
    obs = np.array([[0, 4], [3, 1]], dtype=float)
    exp = obs.sum(1, keepdims=True) * obs.sum(0, keepdims=True) / obs.sum()
    assert r["chi_square"]["chi2"] == pytest.approx(((obs - exp) ** 2 / exp).sum())
    assert r["chi_square"]["dof"] == 1
    none = class_audit(feats[:2], targets[:2], torch.eye(3)[:2], torch.eye(3)[2:], ["cat", "dog"], ["thing"],
                       ["a", "b"])
    assert none["chi_square"]["p_value"] is None and "no image absorbed" in none["chi_square"]["why"]


def test_audit_cli_groups_from_the_csv(tmp_path, capsys) -> None:
    model = clipforge.build("tiny-vit-32")
    clipforge.save(model, tmp_path / "m")
    rows = ["image,label,size"]
    for i, (colour, label, size) in enumerate([((220, 20, 20), "red", "small"), ((20, 20, 220), "blue", "large")] * 3):
        Image.new("RGB", (40, 40), colour).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{label},{size}")
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    args = ["eval", "audit", "--model", str(tmp_path / "m"), "--dataset", str(tmp_path / "d.csv"), "--add", "green",
            "--group-column", "size", "--templates", "a {c} square", "--out", str(tmp_path / "o"), "--no-cache"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| size | images |" in out and "| large | 3 |" in out
    doc = json.loads(next((tmp_path / "o").glob("class_audit__*.json")).read_text())
    assert doc["settings"]["added"] == ["green"] and set(doc["settings"]["groups"]) == {"small", "large"}
    assert main([a if a != "size" else "colour" for a in args]) == 2
    assert "no column 'colour' for --group-column" in capsys.readouterr().err
    assert main([a if a != "green" else "red" for a in args]) == 2
    assert "already classes of the label set" in capsys.readouterr().err


# --- concept composition (sparse probe) --------------------------------------------------------


def test_sparse_concept_probe_recovers_each_class_as_its_two_concepts(tmp_path, capsys) -> None:
    from clipforge.analysis.concepts import composition_hits, sparse_concept_probe

    concepts = ["red", "blue", "green", "circle", "square", "star", "noise1", "noise2"]
    classes = ["red circle", "blue square", "green star", "red star"]
    parts = [(0, 3), (1, 4), (2, 5), (0, 5)]
    rng = np.random.default_rng(0)

    def draw(n):
        y = np.arange(n) % len(classes)
        x = rng.normal(size=(n, len(concepts)))
        for i, c in enumerate(y):
            x[i, list(parts[c])] += 3.0
        return x, y

    (xtr, ytr), (xte, yte) = draw(400), draw(200)
    r = sparse_concept_probe(xtr, ytr, xte, yte, concepts, classes)
    assert r["chosen"]["acc1"] > 0.9
    assert composition_hits(r["composition"]) == 1.0  # each class's top two concepts are its name's words
    # One-word names count by their top concept; names with words outside the vocabulary do not count.
    assert composition_hits({"seven": [("seven", 0.9), ("loop", 0.1)], "one": [("line", 0.5), ("one", 0.4)],
                             "a smudge": [("seven", 0.2)]}, ["seven", "one", "loop", "line"]) == 0.5
    assert all(not any(c.startswith("noise") for c, _ in p[:2]) for p in r["composition"].values())
    per_class = [p["concepts_per_class"] for p in r["curve"]]
    assert per_class[0] <= per_class[-1] and per_class[0] < 2  # a strong penalty keeps few concepts


def test_concepts_cli_splits_in_halves_and_writes_the_trade_off(tmp_path, capsys) -> None:
    model = clipforge.build("tiny-vit-32")
    clipforge.save(model, tmp_path / "m")
    for c, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (40, 40), tuple(v + 5 * i for v in colour)).save(tmp_path / "data" / c / f"{i}.png")
    assert main(["eval", "concepts", "--model", str(tmp_path / "m"), "--dataset", str(tmp_path / "data"),
                 "--concepts", "red,blue,dark", "--out", str(tmp_path / "o"), "--no-cache"]) == 0
    doc = json.loads(next((tmp_path / "o").glob("concept_probe__*.json")).read_text())
    assert doc["settings"]["n_train"] == 4 and doc["settings"]["n_test"] == 4
    assert len(doc["settings"]["curve"]) >= 5 and (tmp_path / "o" / "concepts__m__data.png").is_file()
    assert main(["eval", "concepts", "--model", str(tmp_path / "m"), "--dataset", str(tmp_path / "data"),
                 "--concepts", "red"]) == 2
    assert "at least two concepts" in capsys.readouterr().err


# --- robustness and effective robustness -------------------------------------------------------


def test_effective_robustness_on_known_numbers() -> None:
    from clipforge.analysis.robustness import effective_robustness, fit_trend, logit, robustness_table, trend_at

    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    # Baselines exactly on logit(shifted) = 0.5 logit(source) - 1.
    source = np.array([0.3, 0.5, 0.7, 0.9])
    shifted = sig(0.5 * logit(source) - 1)
    slope, intercept = fit_trend(source, shifted)
    assert slope == pytest.approx(0.5) and intercept == pytest.approx(-1.0)
    # A model at source 0.8 with shifted 0.6: the trend predicts sig(0.5 logit(0.8) - 1).
    want = 0.6 - sig(0.5 * np.log(4) - 1)
    assert effective_robustness((slope, intercept), 0.8, 0.6) == pytest.approx(want)
    assert trend_at((slope, intercept), 0.5) == pytest.approx(sig(-1))
    points = {f"b{i}": {"source": s, "blur": float(t)} for i, (s, t) in enumerate(zip(source, shifted))}
    points["zero-shot"] = {"source": 0.8, "blur": 0.6}
    table = robustness_table(points, [f"b{i}" for i in range(4)], n=10_000)
    assert table["blur"]["effective_robustness"]["zero-shot"] == pytest.approx(want, abs=1e-6)
    assert abs(table["blur"]["effective_robustness"]["b2"]) < 1e-6
    with pytest.raises(ValueError, match="two baselines"):
        fit_trend([0.5, 0.5], [0.4, 0.3])
    # One baseline that collapses under the shift leaves the line where the others put it.
    outlier = fit_trend([*source, 0.8], [*shifted, 0.02])
    assert outlier[0] == pytest.approx(0.5, abs=0.05) and outlier[1] == pytest.approx(-1.0, abs=0.1)


def test_baseline_subsets_and_trend_caveats() -> None:
    from clipforge.analysis.robustness import class_subset, robustness_table, trend_caveats

    y = np.repeat(np.arange(4), [10, 20, 30, 1])
    keep = class_subset(y, 0.1, seed=0)
    assert np.bincount(y[keep]).tolist() == [1, 2, 3, 1] and len(set(keep.tolist())) == len(keep)
    points = {"b1": {"source": 0.6, "s": 0.5}, "b2": {"source": 0.9, "s": 0.4}, "zero-shot": {"source": 0.99, "s": 0.7}}
    table = robustness_table(points, ["b1", "b2"], 100)
    assert table["s"]["baselines_source_range"] == [0.6, 0.9]
    notes = trend_caveats(points, table, ["zero-shot"])
    assert len(notes) == 2 and "outside" in notes[0] and "falls" in notes[1]  # beyond the range, falling trend


def test_image_shifts_are_seeded_and_jitter_keeps_the_hue() -> None:
    from clipforge.analysis.robustness import apply_shift

    img = Image.new("RGB", (32, 32), (200, 40, 40))
    for s in ("blur", "noise", "jitter"):
        a, b = apply_shift([img, img], s, seed=1), apply_shift([img, img], s, seed=1)
        assert all((np.asarray(x) == np.asarray(y)).all() for x, y in zip(a, b))
    for out in apply_shift([img] * 8, "jitter", seed=2):
        r, g, bl = np.asarray(out, dtype=int)[0, 0]
        assert r > g and r > bl  # still red


def test_shifted_scenes_keep_labels_and_font_digits_are_a_shift_of_the_same_task(tmp_path) -> None:
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    from clipforge.data.font_digits import available_fonts, font_digits, render_digit
    from clipforge.data.synthetic import SynthConfig, generate, shifted_split

    cfg = SynthConfig(seed=3, image_size=32, n_train=1, n_val=1, n_zeroshot_per_class=1)
    labels = [lab for _, _, lab in generate("zeroshot_heldout", cfg)]
    for shift in ("background", "outline"):
        out = list(shifted_split("zeroshot_heldout", cfg, shift))
        assert [lab for _, lab in out] == labels and out[0][0].size == (32, 32)
    if not available_fonts():
        pytest.skip("no DejaVu or Liberation font on this machine")
    arr = render_digit(7, available_fonts()[0], np.random.default_rng(0))
    assert arr.shape == (8, 8) and arr.min() >= 0 and arr.max() <= 16 and arr.max() >= 12
    ds = font_digits(tmp_path / "fonts", per_digit=10)
    assert len(ds.images) == 100 and (tmp_path / "fonts" / "labels.csv").is_file()
    # A classifier of the handwritten digits reads the typeset ones far above chance: the same task, shifted.
    digits = load_digits()
    clf = LogisticRegression(max_iter=2000).fit(digits.data, digits.target)
    fonts, rng = available_fonts(), np.random.default_rng(0)
    typeset = np.stack([render_digit(d, fonts[(d + i) % len(fonts)], rng).ravel() for d in range(10) for i in range(6)])
    acc = (clf.predict(typeset) == np.repeat(np.arange(10), 6)).mean()
    assert 0.4 < acc < 0.95, acc  # the same task (far above 10%), and a shift (not the same pixels)


def test_robustness_cli_on_a_tiny_synthetic_set(tmp_path, capsys) -> None:
    from clipforge.data.synthetic import SynthConfig, write_dataset

    data = write_dataset(tmp_path / "d", SynthConfig(seed=1, image_size=32, n_train=1, n_val=1,
                                                     n_zeroshot_per_class=2), progress=False)
    model = clipforge.build("tiny-vit-32")
    clipforge.save(model, tmp_path / "m")
    assert main(["eval", "robustness", "--model", str(tmp_path / "m"), "--dataset", str(data / "zeroshot_seen.csv"),
                 "--shifts", "blur,outline", "--out", str(tmp_path / "o"), "--no-cache"]) == 0
    out = capsys.readouterr().out
    assert "| **zero-shot** |" in out and "blur" in out and "outline" in out
    doc = json.loads(next((tmp_path / "o").glob("robustness__*.json")).read_text())
    assert doc["settings"]["n_test"] == 56 and set(doc["settings"]["table"]) == {"blur", "outline"}
    assert (tmp_path / "o" / "robustness__m__zeroshot_seen.csv.png").is_file()
    assert main(["eval", "robustness", "--model", str(tmp_path / "m"), "--dataset", str(data / "zeroshot_seen.csv"),
                 "--shifts", "fonts"]) == 2
    assert "do not apply" in capsys.readouterr().err


# --- what a unit or a prompt responds to -------------------------------------------------------


def test_unit_specs_and_channel_means() -> None:
    from clipforge.analysis.neurons import Target, _channel_mean

    assert Target.parse_unit("visual.layer4.0:5") == Target(module="visual.layer4.0", channel=5)
    for bad in ("visual.layer4", "visual:x", ":3"):
        with pytest.raises(ConfigError, match="MODULE:CHANNEL"):
            Target.parse_unit(bad)
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    torch.testing.assert_close(_channel_mean(x, 1, 2), x[:, 1].mean(dim=(1, 2)))
    tokens = torch.randn(5, 2, 8)  # [L, B, D]
    torch.testing.assert_close(_channel_mean(tokens, 3, 2), tokens[..., 3].mean(0))
    torch.testing.assert_close(_channel_mean(tokens.transpose(0, 1), 3, 2), tokens[..., 3].mean(0))
    with pytest.raises(ConfigError, match="out of range"):
        _channel_mean(x, 3, 2)


def test_top_images_rank_by_the_units_own_activation(tmp_path) -> None:
    from clipforge.analysis.neurons import Objective, Target, top_images

    model = clipforge.build("tiny-vit-32").eval()
    paths = []
    for i in range(6):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (32, 32), (40 * i, 255 - 40 * i, 100)).save(p)
        paths.append(str(p))
    (tmp_path / "bad.png").write_bytes(b"x")
    target = Target(module="visual.transformer.resblocks.0", channel=3)
    top, bad = top_images(model, target, [*paths, str(tmp_path / "bad.png")], k=3, batch_size=4)
    assert bad == 1 and len(top) == 3
    obj = Objective(model, target)
    with torch.no_grad():  # one image at a time, the slow way
        each = {p: float(obj(model.preprocess.batch([Image.open(p).convert("RGB")]))[0]) for p in paths}
    obj.close()
    want = sorted(each, key=lambda p: -each[p])[:3]
    assert [p for p, _ in top] == want
    assert all(v == pytest.approx(each[p], abs=1e-5) for p, v in top)


@pytest.mark.parametrize("kind", ["unit", "prompt"])
def test_a_feature_visualisation_raises_its_target(kind: str) -> None:
    from clipforge.analysis.neurons import Target, visualise

    torch.manual_seed(0)  # the random tower must not depend on what earlier tests drew (a CI run drew one
    model = clipforge.build("tiny-vit-32")  # whose unit 7 barely moved)
    target = Target(module="visual.transformer.resblocks.1", channel=7) if kind == "unit" \
        else Target(prompt="a red star")
    vis = visualise(model, target, steps=24, lr=0.1, seed=0)
    assert vis["history"][-1][1] > vis["history"][0][1] + 1e-3
    assert vis["image"].shape == (3, 32, 32) and float(vis["image"].min()) >= 0 and float(vis["image"].max()) <= 1
    assert all(p.grad is None for p in model.parameters())  # the model is left untouched


def test_a_unit_silent_on_noise_starts_from_the_fallback_image() -> None:
    """A unit that is 0 (after a ReLU) on every noise image cannot be optimised from noise; the
    visualisation then starts from the given image (the unit's top image) and raises it from there."""
    from torch import nn

    from clipforge.analysis.neurons import Target, fourier_image, image_to_spectrum, spectrum_to_image, visualise
    from clipforge.images.preprocess import Preprocess

    class Bright(nn.Module):  # fires only on images brighter than any noise start (mean over 0.8)
        def forward(self, x):
            return torch.relu(x.mean(dim=(1, 2, 3)) - 0.8)[:, None]

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = nn.Sequential(nn.Identity(), Bright())
            self.scale = nn.Parameter(torch.ones(()))
            self.preprocess = Preprocess(image_size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))

        def encode_image(self, x, normalize=False):
            return self.visual(x) * self.scale

    bright = torch.full((3, 16, 16), 0.9)
    _, freq = fourier_image(16, torch.Generator())
    torch.testing.assert_close(spectrum_to_image(image_to_spectrum(bright, freq), freq, 16)[0], bright, atol=1e-4,
                               rtol=0)
    target = Target(module="visual.1", channel=0)
    silent = visualise(Model(), target, steps=8, lr=0.1)
    assert silent["history"][-1][1] == 0.0 and silent["start"] == 1.0  # every noise scale tried, none moved it
    vis = visualise(Model(), target, steps=8, lr=0.1, fallback=bright)
    assert vis["start"] == "fallback" and vis["history"][0][1] == pytest.approx(0.1, abs=1e-3)
    assert vis["history"][-1][1] > vis["history"][0][1] + 0.01


def test_explain_cli(tmp_path, capsys) -> None:
    model = clipforge.build("tiny-vit-32")
    clipforge.save(model, tmp_path / "m")
    (tmp_path / "imgs").mkdir()
    for i in range(5):
        Image.new("RGB", (32, 32), (50 * i, 30, 200 - 30 * i)).save(tmp_path / "imgs" / f"{i}.png")
    assert main(["explain", "--model", str(tmp_path / "m"), "--list-units"]) == 0
    assert "visual.transformer.resblocks.0" in capsys.readouterr().out
    assert main(["explain", "--model", str(tmp_path / "m"), "--unit", "visual.transformer.resblocks.0:2",
                 "--prompt", "a blue square", "--dataset", str(tmp_path / "imgs"), "-k", "3", "--steps", "4",
                 "--out", str(tmp_path / "o")]) == 0
    doc = json.loads((tmp_path / "o" / "explain.json").read_text())
    assert [t["target"] for t in doc["targets"]] == ["visual.transformer.resblocks.0:2", '"a blue square"']
    assert len(doc["targets"][0]["top"]) == 3 and len(list((tmp_path / "o").glob("*.png"))) == 4
    assert main(["explain", "--model", str(tmp_path / "m"), "--unit", "visual.nope:1", "--steps", "1"]) == 2
    assert "no module 'visual.nope'" in capsys.readouterr().err
