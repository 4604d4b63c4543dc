"""The CLIP trainer: exact accumulation, resume, bad samples, non-finite losses."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from clipforge.engine.schedule import learning_rate, no_decay, param_groups
from clipforge.losses import clip_loss
from clipforge.models import CLIP
from clipforge.training.config import TrainConfig
from clipforge.training.task import contrastive_backward
from clipforge.training.trainer import TrainingDiverged, train
from helpers import micro_config, tiny_synth, tiny_train_config


def _batch(n: int, cfg, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, cfg.vision.image_size, cfg.vision.image_size, generator=g, dtype=torch.float64)
    tokens = torch.randint(1, cfg.text.vocab_size - 2, (n, cfg.text.context_length), generator=g)
    tokens[:, 6] = cfg.text.vocab_size - 1
    return images, tokens


def _grads(model: CLIP) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("micro", [1, 3, 4])
def test_accumulated_gradients_equal_full_batch(micro: int) -> None:
    cfg = micro_config()
    torch.manual_seed(0)
    model = CLIP(cfg).double()
    with torch.no_grad():
        model.logit_scale.fill_(2.0)  # a scale where its gradient is far from zero
    images, tokens = _batch(12, cfg)
    full_loss = contrastive_backward(model, images, tokens, clip_loss)
    full = _grads(model)
    model.zero_grad()
    acc_loss = contrastive_backward(model, images, tokens, clip_loss, micro_batch_size=micro)
    acc = _grads(model)
    torch.testing.assert_close(acc_loss, full_loss, rtol=1e-12, atol=0)
    assert full["logit_scale"].abs() > 1e-3
    for name in full:
        torch.testing.assert_close(acc[name], full[name], rtol=1e-9, atol=1e-12, msg=name)


def test_naive_accumulation_would_overcount_temperature() -> None:
    # What open_clip's accumulation computes: the sum of per-micro-batch losses' gradients.
    cfg = micro_config()
    torch.manual_seed(0)
    model = CLIP(cfg).double()
    images, tokens = _batch(8, cfg)
    contrastive_backward(model, images, tokens, clip_loss)
    exact = model.logit_scale.grad.clone()
    model.zero_grad()
    for i, t in zip(images.split(2), tokens.split(2)):
        img, txt, scale = model(i, t)
        clip_loss(img, txt, scale).backward()
    assert not torch.allclose(model.logit_scale.grad, exact)


def test_weight_decay_groups() -> None:
    model = CLIP(micro_config())
    decayed, plain = param_groups(model, 0.2)
    names = {id(p): n for n, p in model.named_parameters()}
    plain_names = {names[id(p)] for p in plain["params"]}
    assert {"logit_scale", "text.token_embedding.weight", "text.positional_embedding", "visual.class_embedding",
            "visual.positional_embedding", "visual.ln_pre.weight", "visual.conv1.weight"} - plain_names == {
        "visual.conv1.weight"}
    assert all(not no_decay(names[id(p)], p) for p in decayed["params"])
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in {names[id(p)] for p in decayed["params"]}


def test_learning_rate_schedule() -> None:
    assert learning_rate(0, 1.0, 10, 110) == pytest.approx(0.1)
    assert learning_rate(9, 1.0, 10, 110) == pytest.approx(1.0)
    assert learning_rate(60, 1.0, 10, 110) == pytest.approx(0.5)
    assert learning_rate(110, 1.0, 10, 110) == pytest.approx(0.0)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return tiny_synth(tmp_path_factory.mktemp("synth"))


def _weights(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.slow
def test_resume_gives_the_same_weights(synth, tmp_path) -> None:
    full = train(TrainConfig.from_dict(tiny_train_config(synth, tmp_path / "a")), progress=False)
    # Interrupted mid-epoch 1 (12 steps per run of 2 epochs x 6 steps), then resumed.
    cfg_b = tiny_train_config(synth, tmp_path / "b", max_steps=8, save_every_steps=4)
    part = train(TrainConfig.from_dict(cfg_b), progress=False)
    assert part.stopped_early and part.state.step == 8
    cfg_b.pop("max_steps")
    resumed = train(TrainConfig.from_dict(cfg_b), resume="latest", progress=False)
    assert resumed.state.step == full.state.step == 12
    a, b = _weights(tmp_path / "a" / "model"), _weights(tmp_path / "b" / "model")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _corrupt_dataset(synth, root):
    """A copy of the tiny dataset's CSV with every kind of bad sample mixed in."""
    import csv
    import shutil

    with open(synth / "train.csv") as f:
        rows = list(csv.DictReader(f))
    (root / "bad").mkdir(parents=True)
    shutil.copy(synth / rows[0]["image"], root / "bad" / "truncated.png")
    data = (root / "bad" / "truncated.png").read_bytes()
    (root / "bad" / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "bad" / "zero.png").write_bytes(b"")
    (root / "bad" / "corrupt.png").write_bytes(b"\x89PNG not really")
    Image.new("RGB", (8, 8)).save(root / "bad" / "fine.png")
    with open(root / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        for r in rows:
            w.writerow([str(synth / r["image"]), r["caption"]])
        w.writerow(["bad/truncated.png", "a truncated image"])
        w.writerow(["bad/zero.png", "a zero-byte image"])
        w.writerow(["bad/corrupt.png", "a corrupt image"])
        w.writerow(["bad/missing.png", "a missing image"])
        w.writerow(["bad/fine.png", "   "])
        w.writerow(["bad/fine.png", "a black square"])
        w.writerow(["bad/fine.png"])  # too few fields
    return root


@pytest.mark.slow
def test_bad_samples_are_skipped_and_counted(synth, tmp_path, capsys) -> None:
    data = _corrupt_dataset(synth, tmp_path / "data")
    cfg = tiny_train_config(data, tmp_path / "run", epochs=1)
    cfg["data"]["train"] = str(data / "train.csv")
    cfg["batch_size"] = 34  # 96 + 6 readable rows -> 3 steps, every row in a batch
    result = train(TrainConfig.from_dict(cfg), progress=False)
    assert result.state.step == 3
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["skipped"] == {"unreadable image": 3, "missing image": 1, "empty caption": 1, "unreadable row": 1}
    out = capsys.readouterr().err
    assert "skipped samples: 6" in out and "zero.png" in out


@pytest.mark.slow
def test_nonfinite_losses_are_skipped_then_stop(synth, tmp_path) -> None:
    calls = {"n": 0}

    def flaky_loss(img, txt, scale):
        calls["n"] += 1
        loss = clip_loss(img, txt, scale)
        return loss * float("nan") if calls["n"] in (3,) or calls["n"] >= 6 else loss

    cfg = tiny_train_config(synth, tmp_path / "run", epochs=3, save_every_steps=2, max_nonfinite_steps=3)
    with pytest.raises(TrainingDiverged, match="3 consecutive steps"):
        train(TrainConfig.from_dict(cfg), progress=False, loss_fn=flaky_loss)
    # Steps 3, 6, 7, 8 were non-finite and their updates skipped; the checkpoint of step 6 (end of
    # epoch 0) holds good weights and loads.
    import clipforge

    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text()
    assert latest == "step_0000006"
    model = clipforge.load(tmp_path / "run" / "checkpoints" / latest / "model")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    state = json.loads((tmp_path / "run" / "checkpoints" / latest / "state.json").read_text())
    assert state["nonfinite_steps"] == 2


def test_config_errors_are_clear(tmp_path) -> None:
    from clipforge.errors import ConfigError

    (tmp_path / "c.yaml").write_text("optim:\n  lrr: 3\n")
    with pytest.raises(ConfigError, match="optim.lrr"):
        TrainConfig.load(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="no training data"):
        train(TrainConfig(), progress=False)


@pytest.mark.slow
def test_bf16_tiled_loss_locked_tower_and_tensorboard(synth, tmp_path) -> None:
    from safetensors.torch import load_file

    cfg = tiny_train_config(synth, tmp_path / "run", epochs=1, precision="bf16", loss="clip_tiled", tensorboard=True)
    cfg["model"]["lock_image"] = True
    init = train(TrainConfig.from_dict({**cfg, "out_dir": str(tmp_path / "init"), "max_steps": 1}), progress=False)
    before = {k: v.clone() for k, v in init.model.state_dict().items()}
    cfg["model"]["init"] = str(tmp_path / "init" / "model")
    result = train(TrainConfig.from_dict(cfg), progress=False)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.state.history)
    after = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    vis = [k for k in before if k.startswith("visual.")]
    txt = [k for k in before if k.startswith("text.")]
    assert all(torch.equal(before[k], after[k]) for k in vis)  # locked
    assert any(not torch.equal(before[k], after[k]) for k in txt)  # trained
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


# --- BatchNorm under micro-batching --------------------------------------------------------------

def _bn_model() -> CLIP:
    from clipforge.models import CLIPConfig, ResNetConfig

    cfg = micro_config()
    cfg = CLIPConfig(embed_dim=16, vision=ResNetConfig(image_size=32, layers=(1, 1, 1, 1), width=8, head_width=16),
                     text=cfg.text, activation="gelu")
    torch.manual_seed(0)
    return CLIP(cfg).double().train()


def test_micro_batching_updates_batchnorm_statistics_once_per_step() -> None:
    from torch.nn.modules.batchnorm import _BatchNorm

    model = _bn_model()
    images, tokens = _batch(16, model.config)
    full = _bn_model()
    contrastive_backward(full, images, tokens, clip_loss)
    contrastive_backward(model, images, tokens, clip_loss, micro_batch_size=4)
    bns = {n: m for n, m in model.named_modules() if isinstance(m, _BatchNorm)}
    full_bns = dict(full.named_modules())
    for name, bn in bns.items():
        assert bn.num_batches_tracked.item() == 1, name  # not 4 (second pass) + 4 (first pass)
    # The stem's first BatchNorm sees the same inputs either way, and the mean of equal micro-batches'
    # means is the batch mean: its running mean matches the full batch's update exactly.
    torch.testing.assert_close(bns["visual.bn1"].running_mean, full_bns["visual.bn1"].running_mean, rtol=1e-12,
                               atol=1e-14)


def test_micro_batching_a_batchnorm_model_warns(synth, tmp_path, capsys) -> None:
    from clipforge.engine.accumulate import micro_batching_is_inexact

    assert micro_batching_is_inexact(_bn_model()) and not micro_batching_is_inexact(CLIP(micro_config()))
    cfg = tiny_train_config(synth, tmp_path / "run", max_steps=1, micro_batch_size=8)
    cfg["model"] = {**cfg["model"], "name": "tiny-rn-64",
                    "overrides": {"vision": {"image_size": 32, "width": 8, "head_width": 16},
                                  "text": {"width": 32, "layers": 1, "heads": 2}, "embed_dim": 16}}
    train(TrainConfig.from_dict(cfg), progress=False)
    assert "BatchNorm layers" in capsys.readouterr().err


# --- settings no run can use --------------------------------------------------------------------

@pytest.mark.parametrize(("key", "value", "message"), [
    ("epochs", -1, "epochs must be at least 1"), ("epochs", 0, "epochs must be at least 1"),
    ("batch_size", 0, "batch_size must be at least 2"), ("micro_batch_size", 0, "micro_batch_size must be at least 1"),
    ("log_every_steps", 0, "log_every_steps must be at least 1"), ("max_steps", 0, "max_steps must be at least 1"),
])
def test_bad_settings_fail_before_any_work(synth, tmp_path, capsys, key, value, message) -> None:
    from clipforge.cli.main import main

    cfg = tiny_train_config(synth, tmp_path / "run", **{key: value})
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    assert main(["train", "--config", str(tmp_path / "c.json"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_unwritable_out_dir_fails_in_one_line(synth, tmp_path, capsys) -> None:
    from clipforge.cli.main import main

    (tmp_path / "a_file").write_text("x")
    for out in (tmp_path / "a_file" / "run", "/proc/clipforge-run"):
        cfg = tiny_train_config(synth, out)
        (tmp_path / "c.json").write_text(json.dumps(cfg))
        assert main(["train", "--config", str(tmp_path / "c.json"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"out_dir={out}: cannot write there" in err and err.count("\n") == 1


@pytest.mark.slow
def test_resume_drops_the_killed_segments_log_lines(synth, tmp_path) -> None:
    import shutil

    cfg = tiny_train_config(synth, tmp_path / "run", max_steps=8, save_every_steps=3)
    train(TrainConfig.from_dict(cfg), progress=False)
    # As if killed after logging step 8 but before its checkpoint: resume from the one at step 6.
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step_0000008")
    cfg.pop("max_steps")
    train(TrainConfig.from_dict(cfg), resume=str(tmp_path / "run" / "checkpoints" / "step_0000006"), progress=False)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))
    evals = (tmp_path / "run" / "evals.jsonl")
    assert not evals.exists() or len(evals.read_text().splitlines()) == len(set(evals.read_text().splitlines()))


def test_help_config_describes_zeroshot_entries(capsys) -> None:
    from clipforge.cli.main import main

    assert main(["train", "--help-config"]) == 0
    out = capsys.readouterr().out
    for key in ("data.zeroshot[].csv", "data.zeroshot[].classes", "data.zeroshot[].templates"):
        assert key in out


def test_an_empty_zero_shot_set_fails_before_training(synth, tmp_path, capsys) -> None:
    from clipforge.cli.main import main

    (tmp_path / "zs.csv").write_text("image,label\n")
    cfg = tiny_train_config(synth, tmp_path / "run", eval_every_epochs=1)
    cfg["data"]["zeroshot"] = [{"name": "zs", "csv": str(tmp_path / "zs.csv")}]
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    assert main(["train", "--config", str(tmp_path / "c.json"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "zs.csv: no rows below the header" in err and err.count("\n") == 1
    assert not (tmp_path / "run" / "checkpoints").exists()


# --- SigLIP end to end ---------------------------------------------------------------------------

def test_siglip_micro_batches_give_the_full_batch_gradients_bias_included() -> None:
    from dataclasses import replace

    from clipforge.losses import siglip_loss

    torch.manual_seed(0)
    model = CLIP(replace(micro_config(), init_logit_bias=-2.0)).double()
    images, tokens = _batch(12, model.config)
    full_loss = contrastive_backward(model, images, tokens, siglip_loss)
    full = _grads(model)
    model.zero_grad()
    acc_loss = contrastive_backward(model, images, tokens, siglip_loss, micro_batch_size=5)
    torch.testing.assert_close(acc_loss, full_loss, rtol=1e-12, atol=0)
    assert full["logit_bias"].abs() > 1e-3
    for name, g in _grads(model).items():
        torch.testing.assert_close(g, full[name], rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("loss", ["siglip", "siglip_tiled"])
def test_siglip_trains_and_its_bias_is_saved(synth, tmp_path, loss: str) -> None:
    import math

    import clipforge

    cfg = tiny_train_config(synth, tmp_path / "run", epochs=1, loss=loss, micro_batch_size=8)
    result = train(TrainConfig.from_dict(cfg), progress=False)
    bias = result.model.logit_bias.item()
    assert bias != -10.0 and math.isfinite(bias)  # learned from its SigLIP initialisation
    reloaded = clipforge.load(tmp_path / "run" / "model")
    assert reloaded.logit_bias.item() == bias and reloaded.config.init_logit_bias == -10.0
    # open_clip's format keeps it (init_logit_bias in the config, logit_bias in the weights).
    clipforge.export_openclip(reloaded, tmp_path / "oc")
    assert clipforge.load(tmp_path / "oc").logit_bias.item() == bias
    with pytest.raises(clipforge.ClipforgeError, match="no Hugging Face CLIPModel form"):
        clipforge.export_hf(reloaded, tmp_path / "hf")
