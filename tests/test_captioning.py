"""Prefix captioners (ClipCap with a tuned or frozen LM, CapDec, DeCap): train, save, load, caption."""

from __future__ import annotations

import json

import pytest
import torch

import clipforge
from clipforge.captioning.lm import LMConfig
from clipforge.captioning.prefix import PrefixCaptioner, PrefixConfig, capdec_noise, modality_gap
from clipforge.cli.main import main
from clipforge.errors import ConfigError
from clipforge.models.generation import GenerationConfig
from helpers import tiny_synth


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cap")
    data = tiny_synth(root / "data", n_train=64, n_val=8)
    clip = clipforge.build("tiny-vit-32")
    clipforge.save(clip, root / "clip")
    return root, data


def _train(root, data, method: str, *extra: str) -> tuple:
    out = root / method
    args = ["caption", "train", "--method", method, "--clip", str(root / "clip"), "--data", str(data / "train.csv"),
            f"out_dir={out}", "epochs=8", "batch_size=16", "lr=3e-3", "warmup_steps=2", "log_every_steps=1",
            "tensorboard=false", "prefix_length=4", "lm.width=32", "lm.layers=1", "lm.heads=2", "lm.vocab_size=300",
            "lm.context_length=20", "lm.pretrain_epochs=4", "mapper_layers=1", "mapper_heads=2", "gap_pairs=32",
            *extra, "--no-progress"]
    assert main(args) == 0
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return out, [r["loss"] for r in logs if "loss" in r]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["clipcap", "clipcap-frozen", "capdec", "decap", "iterative"])
def test_each_method_trains_saves_loads_and_captions(setup, method, capsys) -> None:
    root, data = setup
    out, losses = _train(root, data, method, *(["lm.pretrain_epochs=40"] if method == "clipcap-frozen" else []))
    if method == "clipcap-frozen":  # the language model learns the captions first, then stays as it is
        lm_logs = [json.loads(line) for line in (out / "lm" / "metrics.jsonl").read_text().splitlines()]
        lm_losses = [r["loss"] for r in lm_logs if "loss" in r]
        assert lm_losses[-1] < lm_losses[0] - 1.0 and losses[-1] <= losses[0]
        from safetensors.torch import load_file

        ckpt = max((out / "lm" / "checkpoints").glob("step_*"))  # the last checkpoint of the pretraining
        pretrained = load_file(str(ckpt / "model.safetensors"))
        final = clipforge.load(out / "model").lm.state_dict()
        assert all(torch.equal(final[k], v) for k, v in pretrained.items())
    else:
        assert losses[-1] < losses[0] - 0.5, losses  # it learns the captions
    model = clipforge.load(out / "model")
    assert model.clip is not None  # loaded with the CLIP it reads
    if method == "iterative":
        from clipforge.captioning.iterative import IterativeCaptioner

        assert isinstance(model, IterativeCaptioner)
    else:
        assert isinstance(model, PrefixCaptioner) and model.config.method == method
    if method == "capdec":  # the noise follows the measured modality gap, and says so
        assert model.config.noise_std > 0 and "image-text distance" in model.config.noise_choice
    if method == "decap":  # the memory: one embedding per distinct training caption, unit length
        import csv

        rows = list(csv.DictReader((data / "train.csv").read_text().splitlines()))
        assert model.memory.shape == (len({r["caption"] for r in rows}), 128)
        torch.testing.assert_close(model.memory.norm(dim=-1), torch.ones(len(model.memory)))
    if method in ("clipcap", "iterative"):  # scored by a judge that is not its CLIP
        from clipforge.captioning.evaluate import evaluate_captioner

        pytest.importorskip("pycocoevalcap")
        judge = clipforge.build("tiny-vit-32")
        out_eval = evaluate_captioner(model, str(data / "val.csv"), judge, GenerationConfig(max_len=10), limit=3,
                                      attribute_images=4)
        assert out_eval["metrics"]["n_images"] == 3 and "clip_score" in out_eval["metrics"]
        with pytest.raises(ConfigError, match="judge"):
            evaluate_captioner(model, str(data / "val.csv"), model, limit=2)
        with pytest.raises(ConfigError, match="the CLIP it reads"):  # nor the CLIP that guided it
            evaluate_captioner(model, str(data / "val.csv"), clipforge.load(root / "clip"), limit=2)
    images = sorted((data / "images" / "val").glob("*.png"))[:2]
    capsys.readouterr()
    assert main(["caption", "--model", str(out / "model"), *map(str, images), "--strategy", "greedy"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.split(": ", 1)[1] for line in lines)


def test_prefix_generation_is_cache_exact_and_its_config_round_trips() -> None:
    from clipforge.captioning.train import PrefixTask  # noqa: F401 - importable

    torch.manual_seed(0)
    cfg = PrefixConfig(method="clipcap-frozen", clip_dim=16, prefix_length=3, mapper_layers=1, mapper_heads=2,
                       lm=LMConfig(vocab_size=30, context_length=16, width=16, layers=1, heads=2),
                       start_id=28, end_id=29)
    model = PrefixCaptioner(cfg)
    emb = torch.randn(4, 16)
    for gen in (GenerationConfig(max_len=8), GenerationConfig(strategy="beam", num_beams=3, max_len=8),
                GenerationConfig(strategy="sample", top_p=0.8, max_len=8)):
        a = model.generate_from_embeddings(emb, gen, use_cache=True, generator=torch.Generator().manual_seed(1))
        b = model.generate_from_embeddings(emb, gen, use_cache=False, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a, b) and (a[:, 0] == 28).all()
    tokens = torch.tensor([[28, 3, 4, 29, 0], [28, 5, 29, 0, 0]])
    out = model(emb[:2], tokens)
    assert out["logits"].shape == (2, 4, 30)
    assert PrefixConfig.from_dict(cfg.to_dict()) == cfg


def test_capdec_noise_covers_the_measured_gap() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(200, 64, generator=g), dim=-1)
    texts = torch.nn.functional.normalize(images + 0.5 * torch.randn(200, 64, generator=g), dim=-1)
    gap = modality_gap(images, texts)
    std, why = capdec_noise(gap)
    noisy = texts + std * torch.randn(200, 64, generator=g)
    moved = (noisy - texts).norm(dim=-1).mean()
    assert abs(float(moved) - gap["mean_distance"]) < 0.05 * gap["mean_distance"] and "std" in why


def test_a_captioner_refuses_another_clip(setup) -> None:
    root, _ = setup
    cfg = PrefixConfig(clip_dim=64, lm=LMConfig(vocab_size=30, context_length=16, width=16, layers=1, heads=2))
    with pytest.raises(ConfigError, match="embeds in 128 dimensions, the captioner reads 64"):
        PrefixCaptioner(cfg).attach_clip(clipforge.load(root / "clip"))


def test_the_iterative_decoder_follows_its_clip() -> None:
    """With CLIP's weight high, the chosen caption is the one the (fake) CLIP matches to the image."""
    from types import SimpleNamespace

    from clipforge.captioning.iterative import IterativeCaptioner, IterativeConfig

    class FakeClip(torch.nn.Module):  # texts containing token 5 point where the image does
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.config = SimpleNamespace(embed_dim=2)
            self.preprocess = None
            self.tokenizer = lambda texts: torch.tensor([[1 if "5" in t.split() else 0] for t in texts])

        def encode_image(self, images):
            return torch.tensor([[1.0, 0.0]]).expand(len(images), 2)

        def encode_text(self, tokens):
            return torch.stack([torch.tensor([1.0, 0.0]) if int(t) else torch.tensor([0.0, 1.0]) for t in tokens[:, 0]])

    torch.manual_seed(0)
    cfg = IterativeConfig(lm=LMConfig(vocab_size=12, context_length=8, width=16, layers=1, heads=2), candidates=10,
                          beams=3, clip_weight=50.0, start_id=10, end_id=11, clip_dim=2)
    model = IterativeCaptioner(cfg)
    model.tokenizer = SimpleNamespace(decode=lambda ids: " ".join(map(str, ids)))
    model.attach_clip(FakeClip())
    ids = model.generate(torch.zeros(2, 3, 4, 4), GenerationConfig(max_len=5))["ids"]
    assert all(5 in row.tolist() for row in ids) and (ids[:, 0] == 10).all()
