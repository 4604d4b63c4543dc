"""alignDRAW, the image tokenizers (dVAE, VQ-VAE), DALL-E and DALL-E mini."""

from __future__ import annotations

import json
import math

import pytest
import torch

from clipforge.generation import filterbank
from clipforge.generation.aligndraw import AlignDRAW, AlignDRAWConfig, gaussian_kl
from clipforge.generation.dalle import DALLE, DALLEConfig, image_mask, layer_kinds, sequence_masks
from clipforge.generation.dalle_mini import DALLEMini, DALLEMiniConfig
from clipforge.generation.dvae import DiscreteVAE, DVAEConfig
from clipforge.generation.vqvae import VQVAE, VQVAEConfig
from clipforge.models.generation import filter_logits

COLOURS = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]])  # red, green, blue, yellow
NAMES = ["red", "green", "blue", "yellow"]


# --- the filterbank -----------------------------------------------------------------------------------

def _window(b: int, gx: float, gy: float, delta: float, var: float, gamma: float = 1.0) -> filterbank.Window:
    t = torch.ones(b)
    return filterbank.Window(gx=gx * t, gy=gy * t, delta=delta * t, var=var * t, gamma=gamma * t)


def test_read_and_write_shapes() -> None:
    x = torch.rand(2, 3, 12, 16)  # H 12, W 16
    w = filterbank.window(torch.tensor([[0.2, -0.3, 0.5, -0.2, 0.1], [-0.5, 0.4, 0.0, -0.5, -0.2]]), 5, 16, 12)
    assert filterbank.read(x, w, 5).shape == (2, 3, 5, 5)
    assert filterbank.write(torch.rand(2, 3, 5, 5), w, 12, 16).shape == (2, 3, 12, 16)
    fx = filterbank.filters(w.gx, w.delta, w.var, 5, 16)
    torch.testing.assert_close(fx.sum(-1), torch.ones(2, 5))  # each filter (centred near the image) sums to 1


def test_read_then_write_with_a_full_grid_is_the_identity() -> None:
    """N = the image side, stride 1, centred, a tiny variance: F is the identity, and so are read and
    write; the parameterisation places that grid at (g~, log delta~) = (0, 0)."""
    x = torch.rand(2, 3, 10, 10)
    w = filterbank.window(torch.tensor([[0.0, 0.0, math.log(1e-3), 0.0, 0.0]] * 2), 10, 10, 10)
    assert torch.allclose(w.gx, torch.full((2,), 4.5)) and torch.allclose(w.delta, torch.ones(2))
    glimpse = filterbank.read(x, w, 10)
    torch.testing.assert_close(glimpse, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(filterbank.write(glimpse, w, 10, 10), x, atol=1e-5, rtol=0)


def test_a_small_grid_reads_where_it_is_placed() -> None:
    """A 2x2 grid, stride 4, tiny variance, centred at (5, 3) reads pixels (3|7, 1|5) against a
    slow per-pixel loop; gamma scales the glimpse and divides the write."""
    x = torch.rand(1, 1, 8, 8)
    w = _window(1, gx=5.0, gy=3.0, delta=4.0, var=1e-3, gamma=2.0)
    out = filterbank.read(x, w, 2)
    expected = torch.tensor([[x[0, 0, y, xx] for xx in (3, 7)] for y in (1, 5)]) * 2
    torch.testing.assert_close(out[0, 0], expected, atol=1e-5, rtol=0)
    painted = filterbank.write(torch.ones(1, 1, 2, 2), w, 8, 8)[0, 0]
    assert painted[1, 3] == pytest.approx(0.5, abs=1e-5) and painted[0, 0] == pytest.approx(0, abs=1e-6)


# --- alignDRAW ----------------------------------------------------------------------------------------

def test_the_kl_term_matches_a_monte_carlo_estimate() -> None:
    g = torch.Generator().manual_seed(0)
    mu_q, mu_p = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    ls_q, ls_p = 0.3 * torch.randn(3, 5, generator=g), 0.3 * torch.randn(3, 5, generator=g)
    z = mu_q + ls_q.exp() * torch.randn(200_000, 3, 5, generator=g)
    log_q = torch.distributions.Normal(mu_q, ls_q.exp()).log_prob(z).sum(-1)
    log_p = torch.distributions.Normal(mu_p, ls_p.exp()).log_prob(z).sum(-1)
    mc = (log_q - log_p).mean(0)
    torch.testing.assert_close(gaussian_kl(mu_q, ls_q, mu_p, ls_p), mc, atol=0.03, rtol=0.01)


def _draw(**kw) -> AlignDRAW:
    torch.manual_seed(0)
    return AlignDRAW(AlignDRAWConfig(image_size=8, vocab_size=20, text_length=4, steps=4, read_size=3, write_size=4,
                                     z_dim=4, hidden=32, text_hidden=8, word_dim=8, align_dim=8, **kw))


def test_aligndraw_loss_is_the_negative_elbo_and_the_prior_is_bounded() -> None:
    model = _draw()
    x = torch.rand(3, 3, 8, 8)
    ids, lengths = torch.randint(0, 20, (3, 4)), torch.tensor([4, 2, 3])
    text = model.encode_captions(ids, lengths)
    out = model.loss(x, text, torch.randn(3, 4, 4))
    torch.testing.assert_close(out["loss"], out["nll"] + out["kl"])
    assert (out["kl"] >= 0).all()
    mu, log_sigma = model._prior(torch.randn(5, 32) * 100)  # mu = tanh(.), sigma = exp(tanh(.))
    assert mu.abs().max() <= 1 and log_sigma.abs().max() <= 1
    # the alignment never looks at pads
    a = model.attention_over_words(model.encode_captions(ids[1:2].expand(2, -1), lengths[1:2].expand(2)),
                                   torch.randn(2, 16))
    assert a.shape == (4, 2, 4) and torch.allclose(a.sum(-1), torch.ones(4, 2))
    assert (a[..., 2:] == 0).all() and (a[..., :2] > 0).all()


def _colour_images(k: torch.Tensor, size: int = 8, noise: float = 0.05) -> torch.Tensor:
    return (COLOURS[k][:, :, None, None].expand(-1, -1, size, size) + noise * torch.randn(len(k), 3, size, size)).clamp(
        -1, 1)


def _nearest_colour(images: torch.Tensor) -> torch.Tensor:
    """The judge: the solid colour nearest each image's mean (no part of any generator)."""
    return torch.cdist(images.mean(dim=(2, 3)), COLOURS).argmin(1)


def test_a_tiny_aligndraw_draws_the_colour_it_is_asked_for() -> None:
    # A loose likelihood (pixel_std 1): the KL then leaves the colour to the caption, not the latent.
    model = _draw(pixel_std=1.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ids = torch.tensor([[1, 2 + i, 0, 0] for i in range(4)])
    lengths = torch.full((4,), 2)
    for _ in range(200):
        k = torch.randint(0, 4, (32,))
        x = (_colour_images(k) + 1) / 2
        out = model.loss(x, model.encode_captions(ids[k], lengths[k]), torch.randn(32, 4, 4))
        opt.zero_grad()
        (out["loss"].mean() / 192).backward()
        opt.step()
    k = torch.arange(4).repeat(4)
    with torch.no_grad():
        images = model.render(torch.randn(16, 16), model.encode_captions(ids[k], lengths[k]))
    assert (_nearest_colour(images) == k).float().mean() >= 0.75  # chance: 0.25


# --- tokenizers -----------------------------------------------------------------------------------------

def _train_tokenizer(model, steps: int = 150):
    from clipforge.generation.rows_task import step_generator

    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(steps):
        x = _colour_images(torch.randint(0, 4, (32,)), noise=0.1)
        g = step_generator(0, step, 0, stream=7)
        if isinstance(model, DiscreteVAE):
            out = model.loss(x, step, torch.rand((32, model.codebook_size, model.grid, model.grid), generator=g))
        else:
            out = model.loss(x, g)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("arch", ["dvae", "vqvae"])
def test_a_tokenizer_round_trip_keeps_the_image_and_its_tokens(arch: str) -> None:
    torch.manual_seed(0)
    shared = {"image_size": 8, "codebook_size": 16, "downsamples": 1, "channels": 16, "code_dim": 8}
    model = DiscreteVAE(DVAEConfig(**shared, anneal_steps=100, kl_warmup_steps=50)) if arch == "dvae" else \
        VQVAE(VQVAEConfig(**shared))
    model = _train_tokenizer(model)
    x = _colour_images(torch.arange(4).repeat(8), noise=0.1)
    tokens = model.encode(x)
    assert tokens.shape == (32, 4, 4) and tokens.dtype == torch.long
    recon = model.decode(tokens)
    recon = recon.detach()
    assert float(((recon - x) ** 2).mean()) < 0.1 * float(((x - x.mean(0)) ** 2).mean())  # far better than the mean
    assert (model.encode(recon) == tokens).float().mean() >= 0.9  # decoding then encoding keeps the tokens
    assert (_nearest_colour(recon) == torch.arange(4).repeat(8)).all()


def test_the_vq_codebook_follows_the_assigned_vectors_and_restarts_dead_codes() -> None:
    from clipforge.generation.vqvae import VectorQuantizer

    vq = VectorQuantizer(VQVAEConfig(codebook_size=4, code_dim=2, ema_decay=0.5, restart_below=0.2)).train()
    g = torch.Generator().manual_seed(0)
    z = torch.tensor([[3.0, 0.0], [3.2, 0.0], [-3.0, 0.0]])[:, :, None, None]  # [B, D, 1, 1]
    vq(z, g)  # the first batch seeds the codes
    assert bool(vq.initialised)
    for _ in range(20):
        out = vq(z, g)
    # every input's code sits on it (moving averages of what was assigned), and the unused codes were
    # restarted onto inputs
    assert torch.cdist(z.flatten(1), vq.embed).min(1).values.max() < 0.15
    assert torch.cdist(vq.embed, z.flatten(1)).min(1).values.max() < 0.15
    e = vq.embed[out["ids"].flatten()]
    torch.testing.assert_close(out["quantized"].flatten(1), e)  # straight-through's value is the code


# --- transformers ---------------------------------------------------------------------------------------

def test_no_image_position_attends_to_a_later_one() -> None:
    for attention in ("dense", "sparse"):
        kinds = layer_kinds(attention, 5)
        for m in sequence_masks(6, 4, kinds):
            assert m.shape == (6 + 15, 6 + 15)
            assert not m.triu(1).any()  # nothing later, text or image
            assert m[6:, :6].all()  # every image token sees the whole caption
            assert m.diagonal().all()
    assert layer_kinds("sparse", 5) == ["row", "column", "row", "row", "conv"]


def test_the_sparse_masks_are_the_papers_patterns() -> None:
    g = 4
    row, col, conv = image_mask("row", g), image_mask("column", g), image_mask("conv", g, 3)
    assert row[9].nonzero().flatten().tolist() == [5, 6, 7, 8, 9]  # the previous g tokens and itself
    assert col[9].nonzero().flatten().tolist() == [1, 5, 9]  # above it in its column
    assert conv[9].nonzero().flatten().tolist() == [4, 5, 6, 8, 9]  # the 3x3 neighbourhood so far


def _tok_cfg(arch: str) -> dict:
    cls = DVAEConfig if arch == "dvae" else VQVAEConfig
    return cls(image_size=8, codebook_size=16, downsamples=1, channels=8, code_dim=8).to_dict()


def _dalle(attention: str = "dense") -> DALLE:
    torch.manual_seed(0)
    return DALLE(DALLEConfig(image_size=8, vocab_size=270, text_length=5, width=32, layers=3, heads=2,
                             attention=attention, tokenizer_config=_tok_cfg("dvae")))


def _mini() -> DALLEMini:
    torch.manual_seed(0)
    return DALLEMini(DALLEMiniConfig(image_size=8, vocab_size=270, text_length=5, width=32, encoder_layers=1,
                                     decoder_layers=2, heads=2, tokenizer_arch="vqvae",
                                     tokenizer_config=_tok_cfg("vqvae")))


@pytest.mark.parametrize("attention", ["dense", "sparse"])
def test_changing_an_image_token_changes_no_earlier_prediction(attention: str) -> None:
    model = _dalle(attention).eval()
    text, image = torch.randint(0, 271, (2, 5)), torch.randint(0, 16, (2, 16))
    before = model(text, image)
    changed = image.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 16
    after = model(text, changed)
    # the logits of image tokens 0..9 are computed before token 9 is read; token 10's reads it
    torch.testing.assert_close(after["image_logits"][:, :10], before["image_logits"][:, :10])
    torch.testing.assert_close(after["text_logits"], before["text_logits"])
    assert not torch.allclose(after["image_logits"][:, 10], before["image_logits"][:, 10])


def _sharpen(model: torch.nn.Module) -> None:
    """Larger weights than the initialisation's: peaked logits, where a cache bug would show."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2 and p.requires_grad:
                p.mul_(8)


@pytest.mark.parametrize("make", [_dalle, lambda: _dalle("sparse"), _mini])
def test_the_cache_gives_the_same_tokens_as_no_cache(make) -> None:
    model = make().eval()
    _sharpen(model)
    text = torch.randint(0, 271, (3, 5))
    for opts in ({"temperature": 0.0}, {"temperature": 1.0, "top_k": 6}, {"temperature": 0.8, "top_p": 0.9}):
        a = model.sample_tokens(text, generator=torch.Generator().manual_seed(1), use_cache=True, **opts)
        b = model.sample_tokens(text, generator=torch.Generator().manual_seed(1), use_cache=False, **opts)
        assert a.shape == (3, 16) and torch.equal(a, b), opts
    with torch.no_grad():  # and the cached greedy tokens are the forward pass's argmax at every position
        greedy = model.sample_tokens(text, temperature=0.0)
        assert torch.equal(model(text, greedy)["image_logits"].argmax(-1), greedy)


def test_top_k_and_top_p_keep_what_a_slow_loop_keeps() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 12, generator=g)
    for k, p in ((3, 1.0), (0, 0.7), (4, 0.5), (0, 1.0), (1, 1.0)):
        out = filter_logits(logits, top_k=k, top_p=p)
        for row, kept in zip(logits, out):
            order = row.argsort(descending=True).tolist()
            top = order[:k] if k else order
            # top-p after top-k, on the renormalised top-k distribution (as transformers' warpers chain)
            probs = {i: float(w) for i, w in zip(top, row[top].softmax(-1))}
            keep, mass = [], 0.0
            for i in top:
                if mass >= p:
                    break
                keep.append(i)
                mass += probs[i]
            assert sorted(torch.isfinite(kept).nonzero().flatten().tolist()) == sorted(keep)
            assert torch.equal(kept[keep], row[keep])


@pytest.mark.parametrize("make", [_dalle, _mini])
def test_a_tiny_transformer_draws_the_colour_it_is_asked_for(make) -> None:
    """Over a tokenizer trained on four colours, captions naming one; the judge reads the mean colour."""
    model = make()
    tok = DiscreteVAE if model.config.tokenizer_arch == "dvae" else VQVAE
    cfg = (DVAEConfig if tok is DiscreteVAE else VQVAEConfig).from_dict(model.config.tokenizer_config)
    kw = {"anneal_steps": 100, "kl_warmup_steps": 50} if tok is DiscreteVAE else {}
    torch.manual_seed(1)
    trained = _train_tokenizer(tok(cfg.__class__(**{**cfg.to_dict(), **kw})))
    model.image_tokenizer.load_state_dict(trained.state_dict())
    text = torch.tensor([[0, 1 + i, 269, 270, 270] for i in range(4)])  # start, colour, end, pads
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(120):
        k = torch.randint(0, 4, (32,))
        image = trained.encode(_colour_images(k, noise=0.1)).flatten(1)
        loss = model.loss(text[k], image)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    k = torch.arange(4).repeat(4)
    tokens = model.sample_tokens(text[k], generator=torch.Generator().manual_seed(0))
    images = model.image_tokenizer.decode(tokens.view(-1, 4, 4))
    assert (_nearest_colour(images) == k).float().mean() >= 0.75  # chance: 0.25


# --- end to end from the CLI --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import clipforge
    from helpers import tiny_synth

    root = tmp_path_factory.mktemp("seq")
    data = tiny_synth(root / "data", n_train=64, n_val=16)
    for name, seed in (("clip", 0), ("judge", 1)):
        torch.manual_seed(seed)
        clipforge.save(clipforge.build("tiny-vit-32"), root / name)
    return root, data


def _train(root, data, method: str, out, *extra: str) -> list[str]:
    return ["generate", "train", "--method", method, "--clip", str(root / "clip"), "--data", str(data / "train.csv"),
            f"out_dir={out}", "epochs=2", "batch_size=16", "warmup_steps=2", "log_every_steps=1", "tensorboard=false",
            "image_size=16", "image_tokenizer.channels=8", "image_tokenizer.code_dim=8",
            "image_tokenizer.codebook_size=32", "transformer.width=16", "transformer.heads=2", "transformer.layers=2",
            "transformer.encoder_layers=1", "aligndraw.hidden=16", "aligndraw.text_hidden=8", "aligndraw.z_dim=4",
            "aligndraw.steps=4", "text_vocab=300", "text_length=32", *extra, "--no-progress"]


def test_tokenizers_and_transformers_train_resume_sample_and_are_judged_from_the_cli(setup, tmp_path,
                                                                                     capsys) -> None:
    from PIL import Image

    import clipforge
    from clipforge.cli.main import main

    root, data = setup
    val = [str(p) for p in sorted((data / "images" / "val").glob("*.png"))[:3]]
    for tok, method in (("dvae", "dalle"), ("vqvae", "dalle-mini")):
        assert main(_train(root, data, tok, tmp_path / tok)) == 0
        assert (tmp_path / tok / "model" / "config.json").is_file()
        rec = tmp_path / f"{tok}.png"
        assert main(["generate", "reconstruct", "--model", str(tmp_path / tok / "model"), *val, "--scale", "1",
                     "--out", str(rec)]) == 0
        assert Image.open(rec).size == (2 * 18 + 2, 3 * 18 + 2)
        assert "codes used" in capsys.readouterr().out
        out = tmp_path / method
        assert main(_train(root, data, method, out, f"tokenizer={tmp_path / tok / 'model'}")) == 0
        model = clipforge.load(out / "model")
        assert model.arch == method.replace("-", "_") and model.clip is not None and model.tokenizer is not None
        grid = tmp_path / f"{method}.png"
        assert main(["generate", "sample", "--model", str(out / "model"), "a red circle", "a blue star", "-n", "2",
                     "--top-k", "8", "--rerank", "2", "--scale", "1", "--out", str(grid)]) == 0
        assert Image.open(grid).size == (2 * 18 + 2, 2 * 18 + 2)
    # a VQ-VAE interrupted and resumed is the uninterrupted one (its codebook's moving averages too)
    part, whole = tmp_path / "part", tmp_path / "whole"
    assert main(_train(root, data, "vqvae", part, "max_steps=5")) == 0
    assert main(_train(root, data, "vqvae", part) + ["--resume", "latest"]) == 0
    assert main(_train(root, data, "vqvae", whole)) == 0
    a, b = clipforge.load(part / "model"), clipforge.load(whole / "model")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    capsys.readouterr()
    # users' mistakes: one line each
    assert main(_train(root, data, "dalle", tmp_path / "x")) == 2
    assert "tokenizer: dalle models the ids of an image tokenizer" in capsys.readouterr().err
    assert main(_train(root, data, "dalle", tmp_path / "x", f"tokenizer={root / 'clip'}")) == 2
    assert "not an image tokenizer" in capsys.readouterr().err
    assert main(["generate", "sample", "--model", str(tmp_path / "dvae" / "model"), "a"]) == 2
    assert "an image tokenizer (dvae), not a generator" in capsys.readouterr().err
    assert main(["generate", "sample", "--model", str(tmp_path / "dalle" / "model"), "a", "--top-p", "0"]) == 2
    assert "top_p in (0, 1]" in capsys.readouterr().err
    assert main(["generate", "sample", "--model", str(tmp_path / "dalle" / "model"), "a", "--search", "ga"]) == 2
    assert "latent search needs a generator with a latent" in capsys.readouterr().err
    assert main(["generate", "interpolate", "--model", str(tmp_path / "dalle" / "model"), "a"]) == 2
    assert "no latent to interpolate" in capsys.readouterr().err
    report = tmp_path / "eval"
    assert main(["eval", "generation", "--model", str(tmp_path / "dalle-mini" / "model"), "--judge",
                 str(root / "judge"), "--dataset", str(data), "-n", "1", "--out", str(report)]) == 0
    assert json.loads((report / "metrics.json").read_text())["seen"]["n_images"] == 56


def test_aligndraw_trains_samples_a_canvas_strip_and_searches_from_the_cli(setup, tmp_path, capsys) -> None:
    from PIL import Image

    import clipforge
    from clipforge.cli.main import main

    root, data = setup
    out = tmp_path / "draw"
    assert main(_train(root, data, "aligndraw", out)) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "elbo_nats", "kl", "mse"} <= set(rows[-1])
    model = clipforge.load(out / "model")
    assert model.arch == "aligndraw" and model.tokenizer is not None
    strip, gif = tmp_path / "canvas.png", tmp_path / "canvas.gif"
    for canvas in (strip, gif):
        assert main(["generate", "sample", "--model", str(out / "model"), "a red circle", "a blue star", "-n", "1",
                     "--scale", "1", "--canvas", str(canvas), "--out", str(tmp_path / "g.png")]) == 0
    assert Image.open(strip).size == (4 * 18 + 2, 2 * 18 + 2)  # a row per prompt, a column per step
    assert Image.open(gif).n_frames == 4
    assert main(["generate", "sample", "--model", str(out / "model"), "a red circle", "-n", "2", "--search", "ga",
                 "--budget", "6", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["generate", "interpolate", "--model", str(out / "model"), "a red circle", "--frames", "3",
                 "--out", str(tmp_path / "i.png")]) == 0
