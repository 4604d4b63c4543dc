"""Caption metrics: pycocoevalcap's scorers on COCO's tokenisation, CLIP-score, scene attributes."""

from __future__ import annotations

import shutil

import pytest
import torch

from clipforge.evaluation.captioning import (
    attribute_accuracy,
    caption_metrics,
    clip_scores,
    python_ptb_tokenize,
    read_scene_caption,
)

pytest.importorskip("pycocoevalcap", reason="the captioning extra (pip install pycocoevalcap)")

CAPTIONS = ["A man riding a horse.", "Two dogs, playing in the snow!", "The kid's toy isn't here -- sadly",
            "a large red circle in the top left", "an (old) T-shirt; on a table..."]


@pytest.mark.skipif(shutil.which("java") is None, reason="COCO's PTB tokenizer needs java")
def test_python_tokenisation_equals_cocos_ptb_tokenizer() -> None:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    theirs = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(CAPTIONS)})
    for i, c in enumerate(CAPTIONS):
        assert python_ptb_tokenize(c) == theirs[i][0], c


def test_coco_metrics_on_hand_checked_cases() -> None:
    refs = {1: ["a red circle on the left", "a small red circle"], 2: ["two blue squares"]}
    perfect = caption_metrics({1: "a red circle on the left", 2: "two blue squares"}, refs)
    assert perfect["bleu_1"] == pytest.approx(1.0) and perfect["rouge_l"] == pytest.approx(1.0)
    worse = caption_metrics({1: "a green star", 2: "a dog"}, refs)
    assert worse["cider_d"] < perfect["cider_d"] and worse["bleu_4"] < 1e-3
    # BLEU-1 by hand: "a red square" vs refs of image 1 -> 2 of 3 unigrams match; brevity penalty
    # exp(1 - 4/3) for the closest reference length (4, "a small red circle").
    import math

    one = caption_metrics({1: "a red square"}, {1: refs[1]})
    assert one["bleu_1"] == pytest.approx(2 / 3 * math.exp(1 - 4 / 3), rel=1e-6)


def test_clip_score_and_ref_clip_score_by_hand() -> None:
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    cap = torch.tensor([[0.6, 0.8], [1.0, 0.0]])  # cos 0.6 and 0
    refs = [torch.tensor([[0.0, 1.0], [0.6, 0.8]]), torch.tensor([[-1.0, 0.0]])]
    out = clip_scores(img, cap, refs)
    assert out["clip_score"] == pytest.approx((2.5 * 0.6 + 0.0) / 2)
    # image 1: CLIP-S 1.5, best reference cos 1.0 -> H-mean 2 * 1.5 * 1 / 2.5 = 1.2; image 2: 0.
    assert out["ref_clip_score"] == pytest.approx(1.2 / 2)


def test_scene_attributes_read_back_from_every_caption_form(tmp_path) -> None:
    import csv

    from clipforge.data.synthetic import SynthConfig, scene_objects, write_dataset

    cfg = SynthConfig(seed=3, image_size=32, n_train=0, n_val=20, n_zeroshot_per_class=1)
    root = write_dataset(tmp_path / "s", cfg, progress=False)
    for split in ("zeroshot_seen", "zeroshot_heldout", "val"):
        rows = list(csv.DictReader((root / f"{split}.csv").read_text().splitlines()))
        objects = scene_objects(split, cfg)
        assert len(rows) == len(objects)
        for row, objs in zip(rows, objects):
            read = read_scene_caption(row["caption"])
            assert (read["colour"], read["shape"]) in {(o.colour, o.shape) for o in objs}, row["caption"]
            if split != "val":
                assert row["label"] == f"{objs[0].colour} {objs[0].shape}"
                assert read["size"] in (None, objs[0].size) and read["position"] in (None, objs[0].position)
    truths = scene_objects("zeroshot_seen", cfg)[:2]
    t0, t1 = truths[0][0], truths[1][0]
    acc = attribute_accuracy([f"a {t0.size} {t0.colour} {t0.shape}", "a picture of nothing"], [t0, t1])
    assert acc["colour_acc"] == 0.5 and acc["size_named"] == 0.5 and acc["size_acc_when_named"] == 1.0
    assert acc["position_named"] == 0.0 and acc["position_acc_when_named"] is None
