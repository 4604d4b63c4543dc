"""Diffusion from the joint embedding: the noise schedule and updates against diffusers, the model,
training on the engine, sampling, and the judge."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clipforge.generation.schedule import NoiseSchedule, ScheduleConfig

FIXTURE = Path(__file__).parent / "fixtures" / "diffusers_schedulers"


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_and_updates_match_diffusers(kind: str) -> None:
    ref = load_file(str(FIXTURE / "values.safetensors"))
    s = NoiseSchedule(ScheduleConfig(kind=kind))
    assert torch.equal(s.betas, ref[f"{kind}/betas"]) and torch.equal(s.alphas_cumprod, ref[f"{kind}/alphas_cumprod"])
    torch.testing.assert_close(torch.stack([s.posterior_variance(t) for t in range(1000)]),
                               ref[f"{kind}/posterior_variance"], rtol=1e-6, atol=0)
    x, eps = ref["x"], ref["eps"]
    for t in (999, 500, 1, 0):  # the same noise draws as diffusers' generator
        got = s.ddpm_step(eps, t, x, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(got, ref[f"{kind}/ddpm/{t}"], rtol=1e-5, atol=1e-6)
    assert s.ddim_timesteps(50) == ref[f"{kind}/ddim_timesteps"].tolist()
    for t in (980, 500, 0):
        torch.testing.assert_close(s.ddim_step(eps, t, x, steps=50), ref[f"{kind}/ddim/{t}"], rtol=1e-5, atol=1e-6)


def test_v_prediction_matches_diffusers() -> None:
    """The output read as v (Salimans & Ho): diffusers' velocity target and both updates."""
    ref = load_file(str(FIXTURE / "values.safetensors"))
    s = NoiseSchedule(ScheduleConfig(prediction="v"))
    x, out = ref["x"], ref["eps"]
    torch.testing.assert_close(s.target(x, out, torch.tensor([999, 500])), ref["v/velocity"], rtol=1e-5, atol=1e-6)
    for t in (999, 500, 0):
        got = s.ddpm_step(out, t, x, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(got, ref[f"v/ddpm/{t}"], rtol=1e-5, atol=1e-6)
    for t in (980, 500, 0):
        torch.testing.assert_close(s.ddim_step(out, t, x, steps=50), ref[f"v/ddim/{t}"], rtol=1e-5, atol=1e-6)


def test_min_snr_weights() -> None:
    """min(SNR, gamma) / SNR for eps, / (SNR + 1) for v (Hang et al. 2023, eq. 9-10); 1 when off."""
    t = torch.tensor([0, 100, 500, 999])
    for prediction in ("epsilon", "v"):
        s = NoiseSchedule(ScheduleConfig(prediction=prediction))
        abar = s.alphas_cumprod[t].double()
        snr = abar / (1 - abar)
        want = [min(float(r), 5.0) / (float(r) + (prediction == "v")) for r in snr]
        torch.testing.assert_close(s.loss_weight(t, 5.0).double(), torch.tensor(want, dtype=torch.float64))
        assert torch.equal(s.loss_weight(t, 0.0), torch.ones(4))


# --- the denoiser, diffusers' layout -----------------------------------------------------------------

def _tiny_diffusion(condition: str = "text", clip_dim: int = 8, prediction: str = "epsilon", **kw):
    from clipforge.generation.diffusion import CLIPDiffusion, DiffusionConfig
    from clipforge.generation.unet import UNetConfig

    torch.manual_seed(0)
    return CLIPDiffusion(DiffusionConfig(image_size=8, condition=condition, clip_dim=clip_dim, cond_drop=0.2,
                                         unet=UNetConfig(channels=(16, 32), attention_levels=(1,), norm_groups=4,
                                                         head_dim=8),
                                         schedule=ScheduleConfig(timesteps=50, prediction=prediction), **kw))


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_the_unet_is_diffusers_unet2dmodel_and_exports_to_a_diffusers_folder(tmp_path, prediction: str) -> None:
    diffusers = pytest.importorskip("diffusers")
    from clipforge.generation.diffusers_io import export_diffusers, load_diffusers

    model = _tiny_diffusion(prediction=prediction).eval()
    export_diffusers(model, tmp_path / "d")
    unet = diffusers.UNet2DModel.from_pretrained(str(tmp_path / "d"), subfolder="unet").eval()
    scheduler = diffusers.DDIMScheduler.from_pretrained(str(tmp_path / "d"), subfolder="scheduler")
    assert torch.equal(scheduler.alphas_cumprod, model.schedule.alphas_cumprod)
    g = torch.Generator().manual_seed(0)
    x, t, cond = torch.randn(3, 3, 8, 8, generator=g), torch.tensor([0, 10, 49]), torch.randn(3, 8, generator=g)
    with torch.no_grad():
        ours = model.predict(x, t, cond)
        proj = model.cond_proj(torch.nn.functional.normalize(cond, dim=-1))
        theirs = unet(x, t, class_labels=proj).sample
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    back = load_diffusers(tmp_path / "d")
    assert back.config == model.config
    with torch.no_grad():
        torch.testing.assert_close(back.predict(x, t, cond), ours)
    # A whole DDIM chain under diffusers' own scheduler and UNet equals clipforge's sampler.
    assert scheduler.config.prediction_type == {"epsilon": "epsilon", "v": "v_prediction"}[prediction]
    scheduler.set_timesteps(5)
    y = x.clone()
    with torch.no_grad():
        for step in scheduler.timesteps:
            y = scheduler.step(unet(y, step, class_labels=proj).sample, step, y).prev_sample
    torch.testing.assert_close(model.sample(cond, steps=5, guidance=1.0, noise=x), y.clamp(-1, 1),
                               rtol=1e-4, atol=1e-4)


def test_guidance_doubles_the_batch_not_the_calls() -> None:
    model = _tiny_diffusion()
    calls = []
    model.unet.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    cond = torch.randn(2, 8)
    model.sample(cond, steps=5, guidance=3.0)
    assert calls == [4] * 5
    calls.clear()
    model.sample(cond, steps=5, guidance=1.0)  # no guidance: the conditional half only
    assert calls == [2] * 5
    a = model.sample(cond, steps=5, guidance=0.0, generator=torch.Generator().manual_seed(0))
    b = model.sample(None, n=2, steps=5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)  # s = 0 is the unconditional model


def test_diffusion_micro_batches_give_the_full_batch_gradients() -> None:
    from clipforge.engine.accumulate import forward_backward
    from clipforge.engine.context import StepContext
    from clipforge.engine.distributed import DistInfo
    from clipforge.generation.config import GenerationTrainConfig
    from clipforge.generation.train import DiffusionTask

    g = torch.Generator().manual_seed(0)
    rows = {"images": torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=g),
            "cond": torch.randn(6, 8, generator=g), "row": torch.arange(6)}
    grads = []
    for micro in (None, 4):
        model = _tiny_diffusion().double()
        task = DiffusionTask(model, rows, GenerationTrainConfig(batch_size=6), DistInfo(), torch.device("cpu"), 0.0)
        batch = dict(rows)
        ctx = StepContext(DistInfo(), torch.device("cpu"), "fp32", micro, task.optimizers(), task)
        ctx.step = 3
        forward_backward(task, batch, ctx)
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)


def test_prior_and_slerp() -> None:
    from clipforge.generation.diffusion import slerp
    from clipforge.generation.prior import DiffusionPrior, PriorConfig

    prior = DiffusionPrior(PriorConfig(dim=8, width=16, layers=1, schedule=ScheduleConfig(timesteps=20)))
    out = prior.sample(torch.randn(3, 8), steps=4, guidance=2.0)
    assert out.shape == (3, 8) and torch.allclose(out.norm(dim=-1), torch.ones(3))
    a, b = torch.randn(3, 4, 4), torch.randn(3, 4, 4)
    assert torch.equal(slerp(a, b, 0.0), a) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    mid = slerp(a, b, 0.5)  # on the arc: its norm between the ends', not shrunk as a straight line is
    assert mid.norm() > 0.9 * min(a.norm(), b.norm())


# --- the judge's metrics ------------------------------------------------------------------------------

def test_r_precision_against_a_loop_and_the_frechet_distance_of_known_gaussians() -> None:
    from clipforge.evaluation.generation import clip_score, frechet_distance, r_precision

    g = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(30, 16, generator=g), dim=-1)
    idx = torch.randint(0, 30, (12,), generator=g)
    images = text[idx] + 0.9 * torch.randn(12, 16, generator=g)
    got = r_precision(images, idx, text, distractors=10, seed=3)
    g2, hits = torch.Generator().manual_seed(3), 0  # the loop it must equal: the same draws, one by one
    for i in range(12):
        pool = [j for j in range(30) if j != int(idx[i])]
        pick = [pool[k] for k in torch.randperm(29, generator=g2)[:10].tolist()]
        sims = [float(torch.nn.functional.cosine_similarity(images[i], text[j], dim=0)) for j in [int(idx[i]), *pick]]
        hits += int(max(range(11), key=lambda k: sims[k]) == 0)
    assert got == hits / 12
    x = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    assert frechet_distance(x, x) < 1e-6
    shifted = frechet_distance(x, x + torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64))
    assert abs(shifted - 5.0) < 1e-6  # same covariance: the squared distance of the means
    assert clip_score(text, text) == pytest.approx(100.0) and clip_score(text, -text) == 0.0


# --- end to end from the CLI --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import clipforge
    from helpers import tiny_synth

    root = tmp_path_factory.mktemp("gen")
    data = tiny_synth(root / "data", n_train=64, n_val=16)
    for name, seed in (("clip", 0), ("judge", 1)):
        torch.manual_seed(seed)
        clipforge.save(clipforge.build("tiny-vit-32"), root / name)
    return root, data


def _train(root, data, method: str, *extra: str):
    import json

    from clipforge.cli.main import main

    out = root / method
    args = ["generate", "train", "--method", method, "--clip", str(root / "clip"), "--data", str(data / "train.csv"),
            f"out_dir={out}", "epochs=6", "batch_size=16", "lr=2e-3", "warmup_steps=2", "log_every_steps=1",
            "tensorboard=false", "image_size=16", "unet.channels=[16,32]", "unet.attention_levels=[1]",
            "unet.norm_groups=4", "unet.head_dim=16", "schedule.timesteps=100", "prior.width=32",
            "prior.layers=1", "prior.timesteps=100", "ema=0.9", *extra, "--no-progress"]
    assert main(args) == 0
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return out, losses


@pytest.mark.slow
def test_ddpm_trains_samples_and_is_judged_from_the_cli(setup, tmp_path, capsys) -> None:
    import clipforge
    from clipforge.cli.main import main

    root, data = setup
    out, losses = _train(root, data, "ddpm")
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.8 * first, losses  # the denoiser learns (from ~1: a random eps prediction)
    model = clipforge.load(out / "model")
    assert model.arch == "clip_diffusion" and model.clip is not None
    grid = tmp_path / "g.png"
    assert main(["generate", "sample", "--model", str(out / "model"), "a red circle", "a blue square", "-n", "3",
                 "--steps", "5", "--rerank", "2", "--scale", "2", "--out", str(grid)]) == 0
    from PIL import Image

    assert Image.open(grid).size == (3 * (32 + 2) + 2, 2 * (32 + 2) + 2)  # 3 columns, 2 prompts, 16 px x 2
    capsys.readouterr()
    for bad, message in ((["", "-n", "1"], "prompt 1 is empty"), (["a", "--guidance", "-1"], "guidance"),
                         (["a", "--steps", "0"], "steps")):
        assert main(["generate", "sample", "--model", str(out / "model"), *bad, "--out", str(grid)]) == 2
        assert message in capsys.readouterr().err
    strip = tmp_path / "i.png"
    for extra in ([], ["--to", "a blue square"]):  # between two noises; between two prompts
        assert main(["generate", "interpolate", "--model", str(out / "model"), "a red circle", *extra, "--frames", "4",
                     "--steps", "3", "--scale", "1", "--out", str(strip)]) == 0
        assert Image.open(strip).size == (4 * (16 + 2) + 2, 16 + 4)
    assert main(["eval", "generation", "--model", str(out / "model"), "--judge", str(root / "clip"),
                 "--dataset", str(data)]) == 2
    assert "the judge is the CLIP this generator is conditioned on" in capsys.readouterr().err
    report = tmp_path / "eval"
    assert main(["eval", "generation", "--model", str(out / "model"), "--judge", str(root / "judge"), "--dataset",
                 str(data), "-n", "1", "--steps", "3", "--out", str(report)]) == 0
    import json

    m = json.loads((report / "metrics.json").read_text())
    for split in ("seen", "heldout"):
        assert 0 <= m[split]["r_precision"] <= 1 and 0 <= m[split]["colour_and_shape_acc"] <= 1
        assert m["ceiling"][split]["n_images"] > 0
    assert m["seen"]["n_images"] == 56 and m["heldout"]["n_images"] == 8 and m["frechet_distance"] >= 0
    assert "Held-out combinations" in (report / "report.html").read_text()


@pytest.mark.slow
def test_unclip_trains_its_prior_and_decoder_and_makes_variations(setup, tmp_path) -> None:
    import clipforge
    from clipforge.cli.main import main

    root, data = setup
    out, losses = _train(root, data, "unclip")
    assert (out / "prior" / "metrics.jsonl").is_file()
    model = clipforge.load(out / "model")
    assert model.arch == "unclip"
    with_prior = model.generate(["a red circle"], steps=3, generator=torch.Generator().manual_seed(0))
    without = model.generate(["a red circle"], use_prior=False, steps=3, generator=torch.Generator().manual_seed(0))
    assert with_prior["images"].shape == (1, 3, 16, 16)
    assert not torch.equal(with_prior["image_embeddings"], without["image_embeddings"])
    images = sorted((data / "images" / "val").glob("*.png"))[:2]
    grid = tmp_path / "v.png"
    assert main(["generate", "variations", "--model", str(out / "model"), *map(str, images), "-n", "2",
                 "--steps", "3", "--scale", "1", "--out", str(grid)]) == 0
    from PIL import Image

    assert Image.open(grid).size == (3 * (16 + 2) + 2, 2 * (16 + 2) + 2)


def test_the_attribute_reader_cannot_see_hue_when_it_reads_shape() -> None:
    """Held-out (colour, shape) pairs never appear in training: shape, size and position are read by
    a trunk whose logits are averaged over every channel order, so recolouring cannot change them."""
    from clipforge.evaluation.scene_attributes import AttributeClassifier, read_attributes

    torch.manual_seed(0)
    model = AttributeClassifier(width=8).eval()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    a, b = model(x), model(x[:, [2, 0, 1]])
    for k in ("shape", "size", "position"):
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(a["colour"], b["colour"])  # colour does see it
    assert set(read_attributes(model, x)) == {"colour", "shape", "size", "position"}


# --- the closed forms and a tiny overfit run ----------------------------------------------

def test_forward_process_closed_form_and_ddim_eta_one_is_ddpm() -> None:
    """q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) with abar_t = prod(1 - beta) (float64 here);
    DDIM with eta = 1 over all T steps is DDPM's ancestral step (its sigma^2 is the posterior variance)."""
    s = NoiseSchedule(ScheduleConfig(clip_sample=False))
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 3, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(4000, 3, 4, 4, generator=g)
    for t in (0, 250, 999):
        xt = s.add_noise(x0.expand(4000, -1, -1, -1), noise, torch.full((4000,), t))
        torch.testing.assert_close(xt.mean(0).double(), abar[t].sqrt() * x0[0].double(), atol=0.06, rtol=0)
        torch.testing.assert_close(xt.var(0).double().mean(), 1 - abar[t], atol=0.03, rtol=0)
    x, out = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    for t in (999, 500, 1):
        ddim = s.ddim_step(out, t, x, steps=1000, eta=1.0, generator=torch.Generator().manual_seed(7))
        ddpm = s.ddpm_step(out, t, x, generator=torch.Generator().manual_seed(7))
        torch.testing.assert_close(ddim, ddpm, rtol=1e-4, atol=1e-5)


def test_guidance_one_is_the_conditional_prediction() -> None:
    model = _tiny_diffusion().eval()
    cond = torch.randn(2, 8)
    a = model.sample(cond, steps=4, guidance=1.0, generator=torch.Generator().manual_seed(0))
    b = model.sample(cond, steps=4, guidance=1.0 + 1e-7, generator=torch.Generator().manual_seed(0))  # guided path
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_tiny_overfit_run_draws_the_colour_it_is_asked_for() -> None:
    """Four solid colours, each with its own condition vector: after a short training the samples,
    read by a nearest-colour judge that has nothing to do with the generator, are the asked colour."""
    from clipforge.generation.diffusion import CLIPDiffusion, DiffusionConfig
    from clipforge.generation.unet import UNetConfig

    torch.manual_seed(0)
    model = CLIPDiffusion(DiffusionConfig(image_size=8, condition="text", clip_dim=4, cond_drop=0.1,
                                          unet=UNetConfig(channels=(16, 32), attention_levels=(), norm_groups=4,
                                                          head_dim=8),
                                          schedule=ScheduleConfig(timesteps=100, prediction="v")))
    colours = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]])  # red, green, blue, yellow
    cond = torch.eye(4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        k = torch.randint(0, 4, (32,))
        x0 = colours[k][:, :, None, None].expand(-1, -1, 8, 8)
        loss = model.loss(x0, cond[k], snr_gamma=5.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    images = model.sample(cond.repeat(2, 1), steps=20, guidance=2.0, generator=torch.Generator().manual_seed(1))
    read = torch.cdist(images.mean(dim=(2, 3)), colours).argmin(1)  # the judge: the nearest solid colour
    assert (read == torch.arange(4).repeat(2)).float().mean() >= 0.75, read  # chance: 0.25
