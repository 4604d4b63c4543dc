"""The recipe options of CLIP training (issue 21): open_clip's weight-decay rule, a moving average of
the weights, several phrasings per caption, the training crop, channels-last."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from clipforge.data.pairs import Pair, PairDataset
from clipforge.engine.ema import WeightEMA
from clipforge.engine.schedule import param_groups
from clipforge.images.preprocess import Preprocess
from clipforge.models import CLIP
from clipforge.training.config import TrainConfig
from clipforge.training.trainer import train
from helpers import micro_config, tiny_synth, tiny_train_config


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return tiny_synth(tmp_path_factory.mktemp("synth"))


def _openclip_excluded(name: str, p: torch.Tensor) -> bool:
    # open_clip's training script: no decay where p.ndim < 2 or the name has "bn", "ln", "bias" or "logit_scale".
    return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


@pytest.mark.parametrize("model", [CLIP(micro_config())])
def test_decay_embeddings_is_open_clips_rule(model) -> None:
    names = {id(p): n for n, p in model.named_parameters()}
    decayed, plain = param_groups(model, 0.1, decay_embeddings=True)
    assert {names[id(p)] for p in plain["params"]} == {n for n, p in model.named_parameters()
                                                       if _openclip_excluded(n, p)}
    assert {"text.token_embedding.weight", "text.positional_embedding", "visual.positional_embedding"} <= {
        names[id(p)] for p in decayed["params"]}
    # clipforge's own default leaves the embeddings undecayed
    assert "text.token_embedding.weight" in {names[id(p)] for p in param_groups(model, 0.1)[1]["params"]}


def test_weight_ema_follows_its_formula() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = WeightEMA(model, 0.9)
    expected = [p.detach().clone().double() for p in model.parameters()]
    for step in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model[1].running_mean.add_(1.0)
        ema.update(model, step)
        d = min(0.9, (1 + step) / (10 + step))
        expected = [d * e + (1 - d) * p.detach().double() for e, p in zip(expected, model.parameters())]
    for e, p in zip(expected, ema.model.parameters()):
        torch.testing.assert_close(p.double(), e, rtol=1e-5, atol=1e-5)
    assert torch.equal(ema.model[1].running_mean, model[1].running_mean)  # buffers copied, not averaged


def test_ema_is_evaluated_saved_and_resumed_exactly(synth, tmp_path) -> None:
    zs = [{"name": "heldout", "csv": str(synth / "zeroshot_heldout.csv")}]
    extra = {"ema": 0.9, "eval_every_epochs": 1}
    full_cfg = tiny_train_config(synth, tmp_path / "a", **extra)
    full_cfg["data"].update(val=str(synth / "val.csv"), zeroshot=zs)
    full = train(TrainConfig.from_dict(full_cfg), progress=False)
    last = full.state.evals[-1]
    assert {"heldout/acc1", "online/heldout/acc1", "val/image_retrieval_recall@1",
            "online/val/image_retrieval_recall@1"} <= set(last)
    saved = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    ema = load_file(str(tmp_path / "a" / "checkpoints" / sorted((tmp_path / "a" / "checkpoints").iterdir())[-1].name
                        / "ema.safetensors"))
    assert all(torch.equal(saved[k], ema[k]) for k in saved)  # the product is the average
    # interrupted mid-run and resumed: the same average at the end
    cfg_b = tiny_train_config(synth, tmp_path / "b", max_steps=8, save_every_steps=4, **extra)
    cfg_b["data"].update(val=str(synth / "val.csv"), zeroshot=zs)
    train(TrainConfig.from_dict(cfg_b), progress=False)
    cfg_b.pop("max_steps")
    train(TrainConfig.from_dict(cfg_b), resume="latest", progress=False)
    resumed = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    assert all(torch.equal(saved[k], resumed[k]) for k in saved)


def test_a_caption_drawn_from_its_phrasings(tmp_path) -> None:
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / "a.png")
    alternatives = ["a red square", "a square that is red", "red square"]
    pairs = [Pair(str(tmp_path / "a.png"), " | ".join(alternatives))]
    seen_tokens = []
    ds = PairDataset(pairs, Preprocess(image_size=16), lambda texts: texts, train=True, seed=3, caption_split=" | ")
    for epoch in range(40):
        ds.set_epoch(epoch)
        seen_tokens.append(ds[0].tokens)
    assert set(seen_tokens) == set(alternatives)  # every phrasing is drawn, nothing else
    ds.set_epoch(7)
    assert ds[0].tokens == seen_tokens[7]  # the draw is a function of seed, epoch and sample
    assert PairDataset(pairs, Preprocess(image_size=16), lambda t: t, caption_split=" | ")[0].tokens == alternatives[0]


def test_the_scenes_phrasings_are_true_and_start_with_the_caption(tmp_path) -> None:
    import csv

    from clipforge.data.synthetic import COLOURS, SHAPES, SynthConfig, scene_objects

    root = tiny_synth(tmp_path, n_train=40, n_val=8)
    with open(root / "train.csv") as f:
        rows = list(csv.DictReader(f))
    scenes = scene_objects("train", SynthConfig(seed=1, image_size=32, n_train=40, n_val=8, n_zeroshot_per_class=1))
    for row, objs in zip(rows, scenes):
        options = row["phrasings"].split(" | ")
        assert options[0] == row["caption"] and len(set(options)) == len(options) > 1
        for text in options:  # every phrasing names each object, and nothing else
            named = [f"{c} {s}" for c in COLOURS for s in SHAPES for _ in range(text.count(f"{c} {s}"))]
            assert sorted(named) == sorted(f"{o.colour} {o.shape}" for o in objs), text


def test_phrasings_train_a_run_and_evaluate_on_the_first(synth, tmp_path) -> None:
    import csv

    from clipforge.checkpoints import load
    from clipforge.data.datasets import load_retrieval
    from clipforge.tokenizer import TrainedBPETokenizer

    cfg = tiny_train_config(synth, tmp_path / "run", max_steps=2)
    cfg["data"].update(caption_column="phrasings", caption_split=" | ")
    train(TrainConfig.from_dict(cfg), progress=False)
    # the tokenizer learned on the phrasings one by one, not on the joined column
    with open(synth / "train.csv") as f:
        texts = [t for row in csv.DictReader(f) for t in row["phrasings"].split(" | ")]
    reference = TrainedBPETokenizer.train(texts, vocab_size=300, context_length=16)
    trained = load(tmp_path / "run" / "model").tokenizer
    assert trained(texts[:50]).tolist() == reference(texts[:50]).tolist()
    val = load_retrieval(str(synth / "val.csv"), caption_column="phrasings", caption_split=" | ")
    assert val.captions == load_retrieval(str(synth / "val.csv")).captions


def test_whole_image_crop_is_the_evaluation_view(tmp_path) -> None:
    from PIL import Image

    from clipforge.training.task import training_preprocess

    img = Image.effect_noise((32, 32), 64).convert("RGB")
    cfg = TrainConfig.from_dict({"data": {"crop_scale": [1, 1], "crop_ratio": [1, 1]}})
    pre = training_preprocess(cfg, Preprocess(image_size=32))
    assert pre.train_crop_scale == (1.0, 1.0) and pre.train_crop_ratio == (1.0, 1.0)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(pre(img, train=True, generator=g), pre(img))
    assert training_preprocess(TrainConfig(), Preprocess(image_size=32)) == Preprocess(image_size=32)


def test_channels_last_gives_the_same_step(synth, tmp_path) -> None:
    from clipforge.engine.distributed import DistInfo
    from clipforge.models import CLIPConfig, ResNetConfig
    from clipforge.training.task import CLIPTask
    from clipforge.training.trainer import LOSSES

    cfg = CLIPConfig(embed_dim=16, vision=ResNetConfig(image_size=32, layers=(1, 1, 1, 1), width=8, head_width=16),
                     text=micro_config(vocab=64, context=8).text, activation="gelu")
    images = torch.randn(4, 3, 32, 32, dtype=torch.float64)  # float64: only the layout differs
    tokens = torch.randint(1, 63, (4, 8))
    grads = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = CLIP(cfg).double().train()
        config = TrainConfig.from_dict({"channels_last": channels_last, "data": {"train": "x.csv"}})
        task = CLIPTask(model, config, [], 0, LOSSES["clip"], DistInfo(), torch.device("cpu"))
        convs = [p for p in model.visual.parameters() if p.ndim == 4]
        assert all(p.is_contiguous(memory_format=torch.channels_last) == channels_last for p in convs if
                   p.shape[2:] != (1, 1))  # a 1x1 kernel is laid out the same way either way
        x = images.contiguous(memory_format=task.memory_format)
        loss = task.loss_from(task.embed((x, tokens)), None)["loss"]
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-10, atol=1e-12)
    for n in grads[0][1]:
        torch.testing.assert_close(grads[0][1][n], grads[1][1][n], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("ema", 1.0, "ema must be in [0, 1)"),
    ("data.crop_scale", [0.5, 1.2], "data.crop_scale must be [low, high] with 0 < low <= high <= 1"),
    ("data.crop_ratio", [2, 1], "data.crop_ratio must be [low, high]"),
    ("data.caption_split", "", "data.caption_split must be a non-empty separator"),
])
def test_bad_recipe_options_fail_in_one_line(synth, tmp_path, capsys, key, value, message) -> None:
    from clipforge.cli.main import main

    cfg = tiny_train_config(synth, tmp_path / "run")
    section, _, name = key.rpartition(".")
    (cfg[section] if section else cfg)[name] = value
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    assert main(["train", "--config", str(tmp_path / "c.json"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_auto_precision_is_bf16_only_where_native(monkeypatch) -> None:
    from clipforge.engine import precision
    from clipforge.engine.context import StepContext
    from clipforge.engine.distributed import DistInfo

    cpu = torch.device("cpu")
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(precision, "native_bf16", lambda device, native=native: native)
        assert precision.resolve_precision("auto", cpu) == expected
        assert StepContext(DistInfo(), cpu, "auto", None, {}, None).precision == expected
    assert precision.resolve_precision("fp32", cpu) == "fp32"
    monkeypatch.undo()
    with open("/proc/cpuinfo") as f:  # the probe agrees with the CPU's own flags
        flags = next((line for line in f if line.startswith("flags")), "").split()
    assert precision.native_bf16(cpu) == ("avx512_bf16" in flags or "amx_bf16" in flags)
