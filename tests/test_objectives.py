"""The CLIP paper's objective comparison (Figure 2): the bag-of-words objective, zero-shot scoring by
likelihood (bag-of-words and captioner), the efficiency ratios, and the experiment end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

import clipforge
from clipforge.models import TextConfig, ViTConfig
from clipforge.models.bag_of_words import BagOfWords, BagOfWordsConfig
from clipforge.models.coca import CoCa, CoCaConfig, DecoderConfig
from clipforge.training.objectives import efficiency_ratios, images_to_reach

VOCAB = 40
PAD, SOT, EOT = 0, 38, 39


def _coca_config() -> CoCaConfig:
    return CoCaConfig(embed_dim=16, vision=ViTConfig(image_size=16, patch_size=8, width=16, layers=1, head_width=8),
                      text=TextConfig(context_length=10, vocab_size=VOCAB, width=16, heads=2, layers=1),
                      decoder=DecoderConfig(width=16, layers=1, heads=2, context_length=10, vocab_size=VOCAB),
                      attn_pooler_queries=3, attn_pooler_heads=2, start_id=SOT, end_id=EOT)


def _tokens(lengths, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = torch.zeros(len(lengths), 10, dtype=torch.long)
    for row, n in enumerate(lengths):
        rows[row, 0], rows[row, n + 1] = SOT, EOT
        rows[row, 1 : n + 1] = torch.randint(1, 6, (n,), generator=g)  # repeated words: counts above 1
    return rows


def _bag_model(tower_arch: str = "coca") -> BagOfWords:
    torch.manual_seed(0)
    return BagOfWords(BagOfWordsConfig(tower_arch=tower_arch, tower=_coca_config().to_dict(), vocab_size=VOCAB,
                                       ignore_ids=[PAD, SOT, EOT])).double()


def test_bag_of_words_loss_is_the_cross_entropy_to_the_normalised_bag() -> None:
    model = _bag_model()
    images = torch.randn(4, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    tokens = _tokens((3, 5, 1, 7))
    logits = model(images)["logits"]
    expected = []
    for i in range(4):  # slow loop: count the words, normalise, cross-entropy
        words = [t for t in tokens[i].tolist() if t not in (PAD, SOT, EOT)]
        log_p = torch.log_softmax(logits[i], dim=0)
        expected.append(-sum(words.count(w) / len(words) * log_p[w] for w in set(words)))
    torch.testing.assert_close(model.loss(logits, tokens), torch.stack(expected).mean(), rtol=1e-12, atol=0)
    # A prompt's score is its bag's log-likelihood: sum over its words (with repeats) of log p(word | image).
    scores = model.text_log_likelihood(images, tokens)
    for i in range(4):
        log_p = torch.log_softmax(logits[i], dim=0)
        for j in range(4):
            want = sum(log_p[t] for t in tokens[j].tolist() if t not in (PAD, SOT, EOT))
            torch.testing.assert_close(scores[i, j], want.detach(), rtol=1e-10, atol=1e-12)


def test_coca_prompt_likelihood_is_its_teacher_forced_caption_loss() -> None:
    """text_log_likelihood (batched over pairs, padding trimmed) equals minus the model's own summed
    captioning loss for each (image, text) pair run alone at full length."""
    torch.manual_seed(0)
    model = CoCa(_coca_config()).double().eval()
    images = torch.randn(3, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    tokens = _tokens((2, 4, 1, 6))
    got = model.text_log_likelihood(images, tokens, max_pairs=5)  # chunks of one image
    for i in range(3):
        for j in range(4):
            out = model(images[i : i + 1], tokens[j : j + 1])
            want = -model.caption_loss(out["logits"], out["labels"], reduction="sum")
            torch.testing.assert_close(got[i, j], want.detach(), rtol=1e-9, atol=1e-10)


def test_bag_of_words_micro_batches_give_the_whole_batch_gradients() -> None:
    from clipforge.engine.accumulate import forward_backward
    from clipforge.engine.context import StepContext
    from clipforge.training.bow_task import BagOfWordsTask

    model = _bag_model("coca")
    task = BagOfWordsTask.__new__(BagOfWordsTask)  # the step alone: no data or optimiser needed
    task.model = model
    images = torch.randn(6, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    tokens = _tokens((3, 5, 2, 7, 4, 6))
    grads = {}
    for micro in (None, 2, 4):
        model.zero_grad()
        ctx = StepContext(task_dist(), torch.device("cpu"), "fp32", micro, {}, task)
        forward_backward(task, (images, tokens), ctx)
        grads[micro] = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    for micro in (2, 4):
        for k, g in grads[None].items():
            torch.testing.assert_close(grads[micro][k], g, rtol=1e-9, atol=1e-12, msg=f"{micro} {k}")


def task_dist():
    from clipforge.engine.distributed import DistInfo

    return DistInfo()


def test_efficiency_ratios_on_known_curves() -> None:
    fast = [{"images": 100, "acc1": 0.2}, {"images": 200, "acc1": 0.6}, {"images": 300, "acc1": 0.5}]
    slow = [{"images": 100, "acc1": 0.1}, {"images": 200, "acc1": 0.2}, {"images": 400, "acc1": 0.4}]
    assert images_to_reach(fast, 0.4) == pytest.approx(150)  # between 0.2 at 100 and 0.6 at 200
    assert images_to_reach(slow, 0.4) == pytest.approx(400)
    assert images_to_reach(fast, 0.1) == pytest.approx(50)  # from (0, 0) to the first point
    assert images_to_reach(slow, 0.7) is None
    (row,) = efficiency_ratios({"contrastive": fast, "bag_of_words": slow}, chance=0.05)
    assert row["target_acc1"] == 0.4 and row["faster"] == "contrastive" and row["ratio"] == pytest.approx(400 / 150)
    assert row["levels"][0]["target_acc1"] == 0.2 and row["levels"][0]["ratio"] == pytest.approx(200 / 100)
    (row,) = efficiency_ratios({"contrastive": fast, "bag_of_words": slow}, chance=0.25)  # 0.4 < twice chance
    assert row["ratio"] is None


def test_seeds_are_averaged_where_every_seed_has_a_point() -> None:
    from clipforge.training.objectives import mean_curve

    a = [{"images": 10, "acc1": 0.2}, {"images": 20, "acc1": 0.4}, {"images": 25, "acc1": 0.5}]
    b = [{"images": 10, "acc1": 0.4}, {"images": 20, "acc1": 0.6}]
    got = mean_curve([a, b])
    assert [p["images"] for p in got] == [10, 20]
    assert got[1]["acc1"] == pytest.approx(0.5) and got[1]["sd"] == pytest.approx(0.1414213, rel=1e-5)
    assert mean_curve([a])[-1] == {"images": 25, "acc1": 0.5, "sd": 0.0}


def test_train_refuses_what_a_bag_of_words_model_cannot_do(tmp_path) -> None:
    from clipforge.errors import ConfigError
    from clipforge.training.config import TrainConfig
    from clipforge.training.trainer import train
    from helpers import tiny_synth, tiny_train_config

    data = tiny_synth(tmp_path / "data", n_train=32, n_val=8)
    cfg = tiny_train_config(data, tmp_path / "run", loss="bag_of_words")
    cfg["model"]["lock_text"] = True
    with pytest.raises(ConfigError, match="no text tower"):
        train(TrainConfig.from_dict(cfg), progress=False)
    clipforge.save(clipforge.build("tiny-vit-32"), tmp_path / "clip")
    cfg = tiny_train_config(data, tmp_path / "run2", loss="bag_of_words")
    cfg["model"]["init"] = str(tmp_path / "clip")
    with pytest.raises(ConfigError, match="continues only a bag-of-words model"):
        train(TrainConfig.from_dict(cfg), progress=False)


@pytest.mark.slow
def test_the_objectives_experiment_from_the_cli(tmp_path, capsys) -> None:
    """Three objectives, equal budgets, one curve each; the bag-of-words model learns, saves and loads."""
    from clipforge.cli.main import main
    from helpers import tiny_synth

    data = tiny_synth(tmp_path / "data", n_train=96, n_val=8)
    out = tmp_path / "exp"
    args = ["experiment", "objectives", "--data", str(data), "--budget-minutes", "0.25", "--batch-size", "16",
            "--eval-every-steps", "4", "--eval-per-class", "1", "--templates", "{article} {c}", "--out", str(out),
            "--no-progress", "--set", "overrides.vision.image_size=32", "overrides.vision.layers=1",
            "overrides.text.layers=1", "overrides.decoder.layers=1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "bag-of-words prediction: best zero-shot top-1" in printed
    summary = json.loads((out / "objectives.json").read_text())
    assert set(summary["curves"]) == {"contrastive", "bag_of_words", "caption"}
    for name, points in summary["curves"].items():
        run = summary["runs"][name]
        assert len(points) >= 2 and points[-1]["images"] == run["images_seen"][0]  # a point at the end
        assert all(0 <= p["acc1"] <= 1 for p in points)
    assert summary["n_classes"] == 56 and math.isclose(summary["chance"], 1 / 56)
    assert len(summary["ratios"]) == 3
    assert (out / "objectives.png").stat().st_size > 1000 and "| pair |" in (out / "objectives.md").read_text()
    train_cfg = json.loads((out / "caption" / "train_config.json").read_text())
    assert train_cfg["model"]["overrides"]["contrastive_weight"] == 0.0 and train_cfg["budget_counts_eval"] is False
    bow = clipforge.load(out / "bag_of_words" / "model")
    assert isinstance(bow, BagOfWords) and bow.config.tower_arch == "coca"
    contrastive = clipforge.load(out / "contrastive" / "model")
    # The same image tower: identical parameter names and shapes.
    assert {k: v.shape for k, v in bow.visual.state_dict().items()} == \
        {k: v.shape for k, v in contrastive.visual.state_dict().items()}
    logs = [json.loads(x) for x in (out / "bag_of_words" / "metrics.jsonl").read_text().splitlines()]
    assert logs[-1]["loss"] < logs[0]["loss"]
    # Run again: the finished runs are reused, not retrained; other settings in the same folder are refused.
    stamp = (out / "caption" / "summary.json").stat().st_mtime_ns
    assert main(args) == 0 and (out / "caption" / "summary.json").stat().st_mtime_ns == stamp
    assert json.loads((out / "objectives.json").read_text())["curves"] == summary["curves"]
    assert main([*args, "--lr", "0.01"]) == 2
    assert "holds a run with other settings" in capsys.readouterr().err
    # The saved models in the evaluation commands: zero-shot by likelihood, a clear refusal where text is needed.
    capsys.readouterr()
    zs = ["eval", "zeroshot", "--dataset", str(data / "zeroshot_seen.csv"), "--templates", "{article} {c}"]
    for name, extra in (("bag_of_words", []), ("caption", ["--scoring", "likelihood"])):
        assert main([*zs, "--model", str(out / name / "model"), "--out", str(tmp_path / name), *extra]) == 0
        (result,) = (tmp_path / name).glob("zeroshot_classification__*.json")
        assert json.loads(result.read_text())["settings"]["scoring"] == "likelihood"
    assert main(["eval", "retrieval", "--model", str(out / "bag_of_words" / "model"), "--dataset",
                 str(data / "val.csv")]) == 2
    assert "has no text embedding" in capsys.readouterr().err
