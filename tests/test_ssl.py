"""Self-supervised pretraining: augmentations, the three methods' defining properties, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clipforge.losses import nt_xent
from clipforge.models.towers import build_image_tower
from clipforge.ssl.augment import AugmentConfig, ViewAugment
from clipforge.ssl.config import SSLConfig
from clipforge.ssl.knn import knn_accuracy
from clipforge.ssl.methods import BYOL, SimCLR, SimSiam
from clipforge.ssl.trainer import encoder_config


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPFORGE_CACHE", str(tmp_path / "cache"))


def _encoder():
    torch.manual_seed(0)
    return build_image_tower(encoder_config(SSLConfig(image_size=16, embed_dim=16)))


def _images(n=8, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_augmentations_stay_in_range_and_follow_the_seed() -> None:
    aug = ViewAugment(16, AugmentConfig())
    x = _images()
    a, b = aug(x, seed=3), aug(x, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, aug(x, seed=4))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a[0], a[1] * 0 + x[0])  # per-sample randomness changes images


def test_simclr_loss_is_the_libraries_nt_xent() -> None:
    m = SimCLR(_encoder(), 16, temperature=0.5, hidden=32, out=8).eval()
    v1, v2 = _images(seed=1), _images(seed=2)
    with torch.no_grad():
        expected = nt_xent(m.projector(m.encoder(v1)), m.projector(m.encoder(v2)), 0.5)
        assert torch.allclose(m(v1, v2), expected)


def test_byol_target_is_an_ema_without_gradient() -> None:
    m = BYOL(_encoder(), 16, hidden=32, out=8)
    loss = m(_images(seed=1), _images(seed=2))
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in m.target_parameters())
    online = [p.detach().clone() for p in list(m.encoder.parameters()) + list(m.projector.parameters())]
    target = [p.detach().clone() for p in m.target_parameters()]
    with torch.no_grad():
        for p in list(m.encoder.parameters()) + list(m.projector.parameters()):
            p.add_(1.0)
    m.update_target(0.9)
    for t_new, t_old, o_old in zip(m.target_parameters(), target, online):
        torch.testing.assert_close(t_new, 0.9 * t_old + 0.1 * (o_old + 1.0))
    assert m.momentum(0, 100) == pytest.approx(0.996) and m.momentum(100, 100) == pytest.approx(1.0)


def test_simsiam_stops_the_gradient_through_z() -> None:
    m = SimSiam(_encoder(), 16, proj_dim=32, bottleneck=8)
    v1, v2 = _images(seed=1), _images(seed=2)
    z2 = m.projector(m.encoder(v2))
    z2.retain_grad()
    p1 = m.predictor(m.projector(m.encoder(v1)))
    (-F.cosine_similarity(p1, z2.detach(), dim=-1).mean()).backward()
    assert z2.grad is None  # no gradient reaches the target branch
    m.zero_grad()
    loss = m(v1, v2)
    loss.backward()
    assert all(p.grad is not None for p in m.predictor.parameters())


@pytest.mark.parametrize("method", ["simclr", "byol", "simsiam"])
def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(method) -> None:
    from clipforge.ssl.trainer import build_method

    cfg = SSLConfig(method=method, image_size=16, embed_dim=16, proj_hidden=32, proj_out=16)
    m = build_method(cfg, _encoder())
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    v1, v2 = _images(16, seed=1), _images(16, seed=2)
    losses = []
    for _ in range(6):
        loss = m(v1, v2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_knn_by_hand() -> None:
    train = torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    test = torch.tensor([[1.0, 0.05], [0.1, 1.0]])
    assert knn_accuracy(train, labels, test, torch.tensor([0, 1]), k=2) == 1.0
    # with k = 3 the two class-0 votes outweigh the class-1 one for the second query too
    assert knn_accuracy(train, labels, test, torch.tensor([0, 1]), k=3, temperature=10.0) == 0.5


@pytest.mark.slow
def test_ssl_training_resumes_and_feeds_clip(tmp_path) -> None:
    from safetensors.torch import load_file

    from clipforge.ssl.trainer import train_ssl

    base = {"method": "simclr", "data": "digits", "image_size": 16, "embed_dim": 16, "proj_hidden": 32,
            "proj_out": 16, "epochs": 1, "batch_size": 128, "eval_every_epochs": 0, "tensorboard": False,
            "eval_linear_probe": False,
            "encoder": {"type": "resnet", "layers": [1, 1, 1, 1], "width": 8, "head_width": 8, "stem": "small"}}
    _, full = train_ssl(SSLConfig.from_dict({**base, "out_dir": str(tmp_path / "a")}), progress=False)
    assert full.evals and 0 <= full.evals[-1]["knn_acc1"] <= 1
    train_ssl(SSLConfig.from_dict({**base, "out_dir": str(tmp_path / "b"), "max_steps": 4}), progress=False)
    train_ssl(SSLConfig.from_dict({**base, "out_dir": str(tmp_path / "b")}), resume="latest", progress=False)
    a = load_file(str(tmp_path / "a" / "encoder" / "encoder.safetensors"))
    b = load_file(str(tmp_path / "b" / "encoder" / "encoder.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The saved encoder names its arch and loads through clipforge.load as the encoder module.
    import clipforge

    encoder = clipforge.load(tmp_path / "a" / "encoder")
    assert all(torch.equal(encoder.state_dict()[k], a[k]) for k in a)
    assert encoder(torch.zeros(2, 3, 16, 16)).shape == (2, 16)

    # The encoder becomes a CLIP model's image tower.
    from clipforge.training.config import TrainConfig
    from clipforge.training.trainer import train
    from helpers import tiny_synth

    data = tiny_synth(tmp_path / "synth", n_train=32)
    cfg = TrainConfig.from_dict({
        "data": {"train": str(data / "train.csv")}, "epochs": 1, "batch_size": 16, "max_steps": 1,
        "out_dir": str(tmp_path / "clip"), "eval_every_epochs": 0, "tensorboard": False,
        "optim": {"lr": 0.0, "warmup_steps": 1},
        "model": {"name": "tiny-rn-64", "tokenizer": "train", "vocab_size": 300, "context_length": 16,
                  "init_image_tower": str(tmp_path / "a" / "encoder"),
                  "overrides": {"embed_dim": 16, "vision": {"image_size": 16, "layers": [1, 1, 1, 1], "width": 8,
                                                            "head_width": 8, "stem": "small"}}},
    })
    model = train(cfg, progress=False).model
    sd = model.visual.state_dict()
    assert all(torch.equal(sd[k], a[k]) for k in a if "running" not in k and "num_batches" not in k)


def test_a_built_in_name_means_its_training_split() -> None:
    from clipforge.errors import DataError
    from clipforge.ssl.data import labelled_sets, unlabelled_images

    assert unlabelled_images("digits:train") == unlabelled_images("digits")
    with pytest.raises(DataError, match="held-out split is for evaluation"):
        unlabelled_images("digits:test")
    train, test = labelled_sets("digits")
    assert not set(train.images) & set(test.images) and set(unlabelled_images("digits")) == set(train.images)
