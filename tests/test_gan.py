"""Text-conditional GANs (GAN-CLS, GAN-INT, style encoder) and CLIP-guided latent search."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipforge.generation.gan import GANConfig, TextGAN
from clipforge.generation.gan_train import discriminator_loss, generator_loss, wrong_texts
from clipforge.generation.latent_search import SearchOptions, search_latents

COLOURS = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]])  # red, green, blue, yellow


def _gan(size: int = 16, clip_dim: int = 4, **kw) -> TextGAN:
    torch.manual_seed(0)
    return TextGAN(GANConfig(image_size=size, clip_dim=clip_dim, z_dim=8, text_dim=8, channels=8, **kw))


@pytest.mark.parametrize("size", [8, 16, 32])
def test_shapes(size: int) -> None:
    model = _gan(size)
    z, t = torch.randn(3, 8), F.normalize(torch.randn(3, 4), dim=-1)
    x = model.generator(z, t)
    assert x.shape == (3, 3, size, size) and x.abs().max() <= 1
    assert model.discriminator(x, t).shape == (3,)
    assert model.style(x).shape == (3, 8)
    assert model.sample(t, generator=torch.Generator().manual_seed(0)).shape == (3, 3, size, size)


def test_bad_sizes_are_refused() -> None:
    from clipforge.errors import ConfigError

    for size in (4, 12, 48):
        with pytest.raises(ConfigError, match="image_size"):
            GANConfig(image_size=size)


class Recorder(nn.Module):
    """A discriminator that records each (image, text) pair batch it scores and returns set logits."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        logits = torch.linspace(-1, 1, len(x)) * (len(self.calls) + 1) + self.w
        self.calls.append((x, text, logits))
        return logits


def test_the_discriminator_sees_the_three_pair_kinds_with_the_right_labels() -> None:
    model = _gan()
    model.discriminator = Recorder()
    real, fake = torch.rand(4, 3, 16, 16), -torch.rand(4, 3, 16, 16)
    text = torch.eye(4)
    loss = discriminator_loss(model, real, text, fake, matching_aware=True)["loss"]
    (x0, t0, l0), (x1, t1, l1), (x2, t2, l2) = model.discriminator.calls
    assert torch.equal(x0, real) and torch.equal(t0, text)  # real, right text
    assert torch.equal(x1, fake) and torch.equal(t1, text)  # fake, right text
    assert torch.equal(x2, real) and torch.equal(t2, text.roll(1, 0))  # real, wrong text
    assert all(not torch.equal(a, b) for a, b in zip(t2, text))  # every row's text is another row's
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = bce(l0, torch.ones(4)) + 0.5 * bce(l2, torch.zeros(4)) + 0.5 * bce(l1, torch.zeros(4))
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), abs=1e-6)
    # Without matching-aware pairs: real/right -> 1, fake/right -> 0, weight 1.
    model.discriminator = Recorder()
    loss = discriminator_loss(model, real, text, fake, matching_aware=False)["loss"]
    (_, _, l0), (_, _, l1) = model.discriminator.calls
    assert float(loss.detach()) == pytest.approx(float((bce(l0, torch.ones(4)) + bce(l1, torch.zeros(4))).detach()),
                                         abs=1e-6)


def test_gan_int_adds_interpolated_captions_for_the_generator() -> None:
    import contextlib
    from types import SimpleNamespace

    from clipforge.engine.distributed import DistInfo
    from clipforge.generation.config import GenerationTrainConfig
    from clipforge.generation.gan_train import GANTask

    model = _gan()
    cfg = GenerationTrainConfig(method="gan-int-cls", batch_size=4, ema=0.0)
    rows = {"images": torch.randint(0, 255, (4, 3, 16, 16), dtype=torch.uint8), "cond": torch.eye(4),
            "row": torch.arange(4)}
    task = GANTask(model, rows, cfg, DistInfo(), torch.device("cpu"), 0.0)
    seen: list[torch.Tensor] = []
    model.generator.register_forward_hook(lambda m, inputs, out: seen.append(inputs[1].clone()))
    steps: list[str] = []
    ctx = SimpleNamespace(step=0, autocast=contextlib.nullcontext,
                          optimizer_step=lambda name, loss, module: steps.append(name))
    out = task.training_step(next(iter(task.batches(0, 0))), ctx)
    assert steps == ["discriminator", "generator"] and {"d_real", "d_fake", "d_wrong"} <= set(out)
    text = seen[0]
    assert len(seen) == 2 and torch.allclose(seen[1], 0.5 * text + 0.5 * wrong_texts(text))
    # generator_loss: the interpolated pair is scored as real too
    with torch.no_grad():
        fake = model.generator(torch.randn(4, 8), text)
        both = generator_loss(model, fake, text, (fake, text))
        assert float(both) == pytest.approx(2 * float(generator_loss(model, fake, text, None)), rel=1e-4)


def _train_colours(method: str = "gan-cls", steps: int = 200) -> TextGAN:
    """Four noisy solid colours, a condition vector each (a hand loop over the task's losses)."""
    model = _gan(8)
    og = torch.optim.Adam(model.generator.parameters(), lr=2e-3, betas=(0.5, 0.999))
    od = torch.optim.Adam(model.discriminator.parameters(), lr=2e-3, betas=(0.5, 0.999))
    cond = torch.eye(4)
    for _ in range(steps):
        k = torch.randint(0, 4, (32,))
        x = COLOURS[k][:, :, None, None].expand(-1, -1, 8, 8) + 0.05 * torch.randn(32, 3, 8, 8)
        fake = model.generator(torch.randn(32, 8), cond[k])
        d = discriminator_loss(model, x, cond[k], fake, matching_aware=method == "gan-cls")
        od.zero_grad()
        d["loss"].backward()
        od.step()
        g = generator_loss(model, fake, cond[k], None)
        og.zero_grad()
        g.backward()
        og.step()
    return model


def _nearest_colour(images: torch.Tensor) -> torch.Tensor:
    """The judge: the solid colour nearest to each image's mean (nothing to do with the generator)."""
    return torch.cdist(images.mean(dim=(2, 3)), COLOURS).argmin(1)


def test_a_tiny_overfit_run_draws_the_colour_it_is_asked_for() -> None:
    model = _train_colours()
    images = model.sample(torch.eye(4).repeat(4, 1), generator=torch.Generator().manual_seed(1))
    assert (_nearest_colour(images) == torch.arange(4).repeat(4)).float().mean() >= 0.75  # chance: 0.25


def test_the_style_encoder_inverts_the_generator() -> None:
    """S trained on (z, G(z, t)) recovers z: G(S(G(z, t)), t) is far closer to G(z, t) than G(z', t)."""
    from clipforge.engine.distributed import DistInfo
    from clipforge.engine.loop import EngineConfig, fit
    from clipforge.generation.config import GenerationTrainConfig
    from clipforge.generation.gan_train import StyleTask

    model = _gan(16, clip_dim=4)
    cfg = GenerationTrainConfig(method="gan-cls", batch_size=32, lr=3e-3)
    text = F.normalize(torch.randn(512, 4), dim=-1)
    task = StyleTask(model, {"cond": text, "row": torch.arange(512)}, cfg, DistInfo(), torch.device("cpu"))
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        fit(task, EngineConfig(out_dir=d, epochs=12, warmup_steps=5, tensorboard=False, eval_every_epochs=0,
                               save_each_epoch=False), DistInfo(), torch.device("cpu"), progress=False)
    g = torch.Generator().manual_seed(5)
    z, t, other = torch.randn(64, 8, generator=g), text[:64], torch.randn(64, 8, generator=g)
    with torch.no_grad():
        x = model.render(z, t)
        model.style.eval()
        z_hat = model.style(x)
        err_inverted = (model.render(z_hat, t) - x).pow(2).mean()
        err_random = (model.render(other, t) - x).pow(2).mean()
    assert (z_hat - z).pow(2).mean() < 0.5 * z.pow(2).mean()  # recovers much of z (0 would be the mean)
    assert err_inverted < 0.5 * err_random


@pytest.mark.parametrize("method", ["ga", "grad"])
def test_latent_search_raises_a_separate_judges_score(method: str) -> None:
    """A tiny generator whose colour follows its latent; the guide is a differentiable redness score,
    the judge a different measure (the share of pixels whose red channel leads). Both searches, at a
    budget of 48 renders, beat the 4 random draws a plain sample takes, under the judge."""
    torch.manual_seed(0)
    generator = nn.Sequential(nn.Linear(6, 3 * 8 * 8), nn.Tanh())

    def render(z: torch.Tensor) -> torch.Tensor:
        return generator(z).view(-1, 3, 8, 8)

    def guide(images: torch.Tensor) -> torch.Tensor:
        return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))

    def judge(images: torch.Tensor) -> float:
        return float((images[:, 0] > images[:, 1:].max(1).values).float().mean())

    draws = torch.Generator().manual_seed(3)
    baseline = judge(render(torch.randn(4, 6, generator=draws)).detach())
    found = search_latents(render, guide, lambda k: torch.randn(k, 6, generator=draws), 4,
                           SearchOptions(method=method, budget=48, population=12, lr=0.2), generator=draws)
    assert found["calls"] <= 48 and found["latents"].shape == (4, 6)
    assert found["scores"][0] >= found["scores"][-1]  # best first
    z_norm = found["latents"].norm(dim=1)
    assert (z_norm < 3 * 6 ** 0.5).all()  # still where the prior's draws lie
    assert judge(render(found["latents"]).detach()) > baseline + 0.1


def test_the_genetic_search_keeps_draws_standard_normal() -> None:
    """Crossover and mutation of N(0, I) members stay N(0, I) (a flat guide: selection is random)."""
    g = torch.Generator().manual_seed(0)
    found = search_latents(lambda z: z, lambda x: torch.zeros(len(x)), lambda k: torch.randn(k, 64, generator=g),
                           200, SearchOptions(method="ga", budget=400, population=200, elite=0), generator=g)
    z = found["latents"]
    assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.05


# --- end to end from the CLI --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import clipforge
    from helpers import tiny_synth

    root = tmp_path_factory.mktemp("gan")
    data = tiny_synth(root / "data", n_train=64, n_val=16)
    for name, seed in (("clip", 0), ("judge", 1)):
        torch.manual_seed(seed)
        clipforge.save(clipforge.build("tiny-vit-32"), root / name)
    return root, data


def _args(root, data, out, *extra: str) -> list[str]:
    return ["generate", "train", "--method", "gan-int-cls", "--clip", str(root / "clip"), "--data",
            str(data / "train.csv"), f"out_dir={out}", "epochs=5", "batch_size=16", "warmup_steps=2",
            "log_every_steps=1", "tensorboard=false", "image_size=16", "gan.channels=8", "gan.z_dim=8",
            "gan.text_dim=8", "gan.style_share=0.2", "ema=0.9", *extra, "--no-progress"]


@pytest.mark.slow
def test_a_gan_trains_resumes_samples_searches_restyles_and_is_judged_from_the_cli(setup, tmp_path, capsys) -> None:
    import clipforge
    from clipforge.cli.main import main

    root, data = setup
    out = tmp_path / "gan"
    assert main(_args(root, data, out)) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "d_loss", "d_real", "d_fake", "d_wrong"} <= set(rows[-1]) and rows[-1]["step"] == 16
    assert (out / "style" / "metrics.jsonl").is_file()
    model = clipforge.load(out / "model")
    assert model.arch == "text_gan" and model.clip is not None and model.style is not None
    # an interrupted run resumed gives the same generator as the uninterrupted one
    part = tmp_path / "part"
    assert main(_args(root, data, part, "gan.style_share=0", "max_steps=7")) == 0
    assert main(_args(root, data, part, "gan.style_share=0") + ["--resume", "latest"]) == 0
    whole = tmp_path / "whole"
    assert main(_args(root, data, whole, "gan.style_share=0")) == 0
    a, b = clipforge.load(part / "model"), clipforge.load(whole / "model")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    from PIL import Image

    grid = tmp_path / "g.png"
    for extra in ([], ["--search", "ga", "--budget", "12"], ["--search", "grad", "--budget", "6"]):
        assert main(["generate", "sample", "--model", str(out / "model"), "a red circle", "a blue square", "-n", "3",
                     "--scale", "1", "--out", str(grid), *extra]) == 0
        assert Image.open(grid).size == (3 * (16 + 2) + 2, 2 * (16 + 2) + 2)
    style = tmp_path / "s.png"
    images = sorted((data / "images" / "val").glob("*.png"))[:2]
    assert main(["generate", "style", "--model", str(out / "model"), "--style", str(images[0]), "--style",
                 str(images[1]), "a red circle", "a blue star", "--scale", "1", "--out", str(style)]) == 0
    assert Image.open(style).size == (3 * (16 + 2) + 2, 2 * (16 + 2) + 2)
    capsys.readouterr()
    for bad, message in ((["a", "--search", "ga", "--budget", "2", "-n", "3"], "budget 2 is fewer"),
                         (["a", "--search", "ga", "--rerank", "2"], "either rerank or a latent search")):
        assert main(["generate", "sample", "--model", str(out / "model"), *bad, "--out", str(grid)]) == 2
        assert message in capsys.readouterr().err
    assert main(["generate", "style", "--model", str(out / "model"), "--style", str(tmp_path / "none.png"),
                 "a"]) == 2
    assert "none.png" in capsys.readouterr().err
    report = tmp_path / "eval"
    assert main(["eval", "generation", "--model", str(out / "model"), "--judge", str(root / "judge"), "--dataset",
                 str(data), "-n", "1", "--out", str(report), "--search", "ga", "--budget", "4"]) == 0
    m = json.loads((report / "metrics.json").read_text())
    assert m["seen"]["n_images"] == 56 and m["options"]["search"] == "ga"


# --- ControlGAN -------------------------------------------------------------------------------------

def _control(size: int = 16, base: int = 8, clip_dim: int = 4, word_dim: int = 6):
    from clipforge.generation.controlgan import ControlGAN, ControlGANConfig

    torch.manual_seed(0)
    return ControlGAN(ControlGANConfig(image_size=size, base_size=base, clip_dim=clip_dim, word_dim=word_dim,
                                       z_dim=8, cond_dim=4, channels=8, disc_channels=8))


def test_controlgan_draws_every_stage_and_scores_words() -> None:
    model = _control(32, 8)
    assert model.config.sides == [8, 16, 32]
    s, words = F.normalize(torch.randn(3, 4), dim=-1), torch.randn(3, 5, 6)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] + [False] * 4])
    out = model.generator(torch.randn(3, 8), s, words, mask, torch.randn(3, 4))
    assert [tuple(x.shape) for x in out["images"]] == [(3, 3, 8, 8), (3, 3, 16, 16), (3, 3, 32, 32)]
    assert out["mu"].shape == out["logvar"].shape == (3, 4)
    for k, disc in enumerate(model.discriminators):
        logits = disc(out["images"][k], s, words, mask)
        assert logits["uncond"].shape == logits["cond"].shape == (3,)
        assert ("word" in logits) == (k == 2)  # the word-level discriminator sits on the last stage


def test_padding_words_change_nothing() -> None:
    """Attention and the word-level discriminator ignore masked positions, whatever they hold."""
    model = _control().eval()
    s, words = F.normalize(torch.randn(2, 4), dim=-1), torch.randn(2, 5, 6)
    mask = torch.tensor([[True] * 3 + [False] * 2] * 2)
    noisy = words.clone()
    noisy[:, 3:] = 1e3 * torch.randn(2, 2, 6)
    z = torch.randn(2, 8)
    with torch.no_grad():
        a = model.generator(z, s, words, mask)["images"][-1]
        b = model.generator(z, s, noisy, mask)["images"][-1]
        x = torch.rand(2, 3, 16, 16) * 2 - 1
        wa = model.discriminators[-1](x, s, words, mask)["word"]
        wb = model.discriminators[-1](x, s, noisy, mask)["word"]
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(wa, wb)


def test_channel_attention_weights_words_per_channel() -> None:
    """Against a loop: channel j's context is sum_i softmax_i(h_j . f_i) f_i, f = V e."""
    from clipforge.generation.controlgan import ChannelAttention

    torch.manual_seed(0)
    att = ChannelAttention(4, 6)
    h, e = torch.randn(1, 3, 4, 4), torch.randn(1, 5, 6)
    out = att(h, e, None)
    f = e[0] @ att.proj.weight.T  # [L, N]
    for j in range(3):
        w = (f @ h[0, j].flatten()).softmax(0)
        torch.testing.assert_close(out[0, j].flatten(), (w[:, None] * f).sum(0), rtol=1e-5, atol=1e-6)


def test_the_conditioning_augmentation_kl_matches_a_monte_carlo_estimate() -> None:
    from clipforge.generation.controlgan_train import kl_to_standard_normal

    torch.manual_seed(0)
    mu, logvar = torch.randn(1, 3) * 0.5, torch.randn(1, 3) * 0.3
    x = mu + (0.5 * logvar).exp() * torch.randn(200_000, 3)
    log_q = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(x).sum(1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(1)
    assert float(kl_to_standard_normal(mu, logvar)) == pytest.approx(float((log_q - log_p).mean()), abs=0.01)


def test_a_tiny_controlgan_draws_the_colour_its_word_asks_for() -> None:
    """Solid colours named by the sentence and by a word (adversarial losses alone, a hand loop)."""
    from clipforge.generation.controlgan_train import discriminator_losses, generator_adversarial

    model = _control(16, 8, clip_dim=4, word_dim=4)
    og = torch.optim.Adam(model.generator.parameters(), lr=2e-3, betas=(0.5, 0.999))
    od = torch.optim.Adam(model.discriminators.parameters(), lr=2e-3, betas=(0.5, 0.999))
    mask = torch.ones(32, 2, dtype=torch.bool)
    for _ in range(150):
        k = torch.randint(0, 4, (32,))
        words = torch.stack([torch.ones(32, 4) * 0.5, torch.eye(4)[k]], dim=1)  # "a" + the colour word
        x = COLOURS[k][:, :, None, None].expand(-1, -1, 16, 16) + 0.05 * torch.randn(32, 3, 16, 16)
        reals = [F.avg_pool2d(x, 2), x]
        s = torch.eye(4)[k]
        out = model.generator(torch.randn(32, 8), s, words, mask, torch.randn(32, 4))
        d = discriminator_losses(model, reals, [f.detach() for f in out["images"]], s, words, mask)
        od.zero_grad()
        d["loss"].backward()
        od.step()
        g = generator_adversarial(model, out["images"], s, words, mask)
        og.zero_grad()
        g.backward()
        og.step()
    model.eval()
    words = torch.stack([torch.ones(16, 4) * 0.5, torch.eye(4).repeat(4, 1)], dim=1)
    with torch.no_grad():
        images = model.generator(torch.randn(16, 8), torch.eye(4).repeat(4, 1), words, mask[:16])["images"][-1]
    assert (_nearest_colour(images) == torch.arange(4).repeat(4)).float().mean() >= 0.75  # chance: 0.25


@pytest.mark.slow
def test_controlgan_trains_samples_searches_and_measures_word_edits_from_the_cli(setup, tmp_path, capsys) -> None:
    import clipforge
    from clipforge.cli.main import main

    root, data = setup
    out = tmp_path / "cg"
    assert main(["generate", "train", "--method", "controlgan", "--clip", str(root / "clip"), "--data",
                 str(data / "train.csv"), f"out_dir={out}", "epochs=2", "batch_size=16", "warmup_steps=2",
                 "log_every_steps=1", "tensorboard=false", "image_size=16", "controlgan.base_size=8",
                 "controlgan.channels=8", "controlgan.disc_channels=8", "controlgan.cond_dim=4", "gan.z_dim=8",
                 "--no-progress"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"adversarial", "perceptual", "cosine", "kl", "d_word_real", "d_word_wrong"} <= set(rows[-1])
    model = clipforge.load(out / "model")
    assert model.arch == "controlgan" and model.clip is not None
    grid = tmp_path / "g.png"
    assert main(["generate", "sample", "--model", str(out / "model"), "a red circle", "-n", "2", "--search", "grad",
                 "--budget", "4", "--out", str(grid)]) == 0
    capsys.readouterr()
    assert main(["generate", "interpolate", "--model", str(out / "model"), "a red circle", "--to", "a blue star",
                 "--out", str(grid)]) == 2
    assert "words, which do not interpolate" in capsys.readouterr().err
    report = tmp_path / "eval"
    assert main(["eval", "generation", "--model", str(out / "model"), "--judge", str(root / "judge"), "--dataset",
                 str(data), "-n", "1", "--out", str(report), "--word-edits"]) == 0
    assert "colour word edited: drawn" in capsys.readouterr().out
    edits = json.loads((report / "metrics.json").read_text())["word_edits"]
    assert set(edits) == {"colour", "shape"} and edits["colour"]["n_images"] == 64
    assert all(0 <= v <= 1 for e in edits.values() for k, v in e.items() if k != "n_images")


def test_the_perceptual_features_are_the_image_towers_middle() -> None:
    import clipforge
    from clipforge.models.resnet import ModifiedResNet

    torch.manual_seed(0)
    for name in ("tiny-vit-32", "tiny-rn-64"):
        clip = clipforge.build(name).eval()
        x = torch.randn(2, 3, clip.visual.config.image_size, clip.visual.config.image_size)
        mid = clip.encode_image_middle(x)
        v = clip.visual
        with torch.no_grad():
            if isinstance(v, ModifiedResNet):  # after its second stage
                expected = v.layer2(v.layer1(v.stem(x)))
            else:  # ViT: the patch tokens after half the blocks
                h = v.conv1(x).flatten(2).transpose(1, 2)
                h = v.ln_pre(torch.cat([v.class_embedding.expand(2, 1, -1), h], 1) + v.positional_embedding)
                for block in v.transformer.resblocks[: len(v.transformer.resblocks) // 2]:
                    h = block(h)
                expected = h[:, 1:]
        torch.testing.assert_close(mid, expected)
