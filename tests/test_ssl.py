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


def _lars_reference(w0, grads, lrs, momentum, wd, trust, adapt):
    """SimCLR's LARS (google-research/simclr lars_optimizer.py), one float64 element loop per step."""
    import numpy as np

    w, v = np.array(w0, dtype=np.float64), np.zeros(len(w0))
    for g, lr in zip(grads, lrs):
        g = np.array(g, dtype=np.float64)
        if adapt:
            g = g + wd * w
            wn, gn = np.sqrt(sum(x * x for x in w)), np.sqrt(sum(x * x for x in g))
            ratio = trust * wn / gn if wn > 0 and gn > 0 else 1.0
        else:
            ratio = 1.0
        for i in range(len(w)):
            v[i] = momentum * v[i] + lr * ratio * g[i]
            w[i] -= v[i]
    return w


@pytest.mark.parametrize("adapt", [True, False])
def test_lars_follows_simclrs_update_rule(adapt) -> None:
    from clipforge.engine.lars import LARS

    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(6, generator=gen, dtype=torch.float64)
    grads = [torch.randn(6, generator=gen, dtype=torch.float64) for _ in range(5)]
    lrs = [0.5, 1.0, 0.8, 0.3, 0.1]  # a schedule: the rate sits inside the momentum, as in SimCLR's code
    p = torch.nn.Parameter(w0.clone())
    opt = LARS([{"params": [p], "lars": adapt, "weight_decay": 0.1 if adapt else 0.0}], lr=1.0, momentum=0.9,
               weight_decay=0.1, trust=1e-3)
    for g, lr in zip(grads, lrs):
        opt.param_groups[0]["lr"] = lr
        p.grad = g.clone()
        opt.step()
    expected = _lars_reference(w0.tolist(), [g.tolist() for g in grads], lrs, 0.9, 0.1, 1e-3, adapt)
    assert torch.allclose(p.detach(), torch.tensor(expected, dtype=torch.float64), atol=1e-12)


def test_lars_groups_and_default_rates() -> None:
    from clipforge.engine.lars import LARS, lars_groups
    from clipforge.errors import ConfigError
    from clipforge.ssl.trainer import build_method, build_optimizer

    cfg = SSLConfig.from_dict({"optimizer": "lars", "batch_size": 256, "image_size": 16, "embed_dim": 16})
    assert cfg.peak_lr() == pytest.approx(0.075 * 16)  # the SimCLR paper's 0.075 sqrt(N)
    assert SSLConfig.from_dict({}).peak_lr() == 1e-3 and SSLConfig.from_dict({"lr": 0.01}).peak_lr() == 0.01
    method = build_method(cfg, _encoder())
    opt = build_optimizer(cfg, method)
    assert isinstance(opt, LARS)
    adapt, plain = lars_groups(method, 1e-6)
    names = {id(p): n for n, p in method.named_parameters()}
    assert all(p.ndim >= 2 for p in adapt["params"])  # weights adapt; biases, gains, embeddings do not
    assert {names[id(p)] for p in plain["params"]} == {n for n, p in method.named_parameters()
                                                        if p.ndim < 2 or "positional_embedding" in n}
    assert not plain["lars"] and plain["weight_decay"] == 0
    with pytest.raises(ConfigError, match="optimizer must be one of 'adamw', 'lars'"):
        SSLConfig.from_dict({"optimizer": "sgd"})


def test_channels_last_gives_the_same_loss_and_gradients() -> None:
    from clipforge.ssl.trainer import build_method

    cfg = SSLConfig.from_dict({"image_size": 16, "embed_dim": 16, "proj_hidden": 32})
    a = build_method(cfg, _encoder())
    b = build_method(cfg, _encoder())
    b.load_state_dict(a.state_dict())
    b = b.to(memory_format=torch.channels_last)
    x1, x2 = _images(8), _images(8, seed=1)
    la = a(x1, x2)
    lb = b(x1.contiguous(memory_format=torch.channels_last), x2.contiguous(memory_format=torch.channels_last))
    la.backward()
    lb.backward()
    assert torch.allclose(la, lb, atol=1e-5)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-4, rtol=1e-3), name


def test_object_crops_hold_their_object(tmp_path) -> None:
    import csv
    import json

    import numpy as np
    from PIL import Image

    from clipforge.data.synthetic import COLOURS, POSITIONS
    from clipforge.data.synthetic_objects import crop_box, write_object_crops
    from helpers import tiny_synth

    for position in POSITIONS:  # every box is inside the scene and around its cell's centre
        x0, y0, x1, y1 = crop_box(position, 64)
        row, col = divmod(POSITIONS.index(position), 3)
        assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64 and x1 - x0 == y1 - y0 == 26
        assert x0 <= (col + 0.5) * 64 / 3 <= x1 and y0 <= (row + 0.5) * 64 / 3 <= y1
    scenes = tiny_synth(tmp_path / "synth", n_train=20)
    counts = write_object_crops(scenes, tmp_path / "objects", train_scenes=10)
    meta = json.loads((scenes / "meta.json").read_text())
    assert counts["labelled"] == sum(meta["counts"][s] for s in ("zeroshot_seen", "zeroshot_heldout"))
    assert counts["train_crops"] == len(list((tmp_path / "objects" / "train").glob("*.png"))) >= 10
    with open(tmp_path / "objects" / "labelled.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:  # the labelled object's colour is in its crop (a shape is at least ~20 pixels here)
        pixels = np.asarray(Image.open(tmp_path / "objects" / r["image"]), dtype=np.float64).reshape(-1, 3)
        near = np.linalg.norm(pixels - np.array(COLOURS[r["colour"]]), axis=1) < 30
        assert near.sum() >= 10, r


def test_multi_crop_adds_small_views_as_positives_of_the_global_ones() -> None:
    from clipforge.ssl.methods import view_pairs

    assert view_pairs(2) == [(0, 1), (1, 0)] and view_pairs(3) == [(0, 1), (0, 2), (1, 0), (1, 2)]
    enc = _encoder()
    x1, x2 = _images(8, 16), _images(8, 16, seed=1)
    small = [_images(8, 8, seed=2), _images(8, 8, seed=3)]  # half the side: the pool resamples its grid
    torch.manual_seed(0)
    simclr = SimCLR(enc, 16, 0.5, 32, 16).eval()
    z = [simclr.projector(enc(v)) for v in (x1, x2, *small)]
    by_hand = (nt_xent(z[0], z[1]) + nt_xent(z[0], z[2]) + nt_xent(z[0], z[3]) + nt_xent(z[1], z[2])
               + nt_xent(z[1], z[3])) / 5
    assert torch.allclose(simclr(x1, x2, small), by_hand, atol=1e-6)
    assert torch.allclose(simclr(x1, x2), nt_xent(z[0], z[1]), atol=1e-6)  # no small view: the paper's loss

    siam = SimSiam(enc, 16, 32, 8).eval()
    z = [siam.projector(enc(v)) for v in (x1, x2, *small)]
    p = [siam.predictor(v) for v in z]
    d = lambda a, b: -F.cosine_similarity(a, b, dim=-1).mean()  # noqa: E731
    by_hand = (d(p[1], z[0]) + d(p[2], z[0]) + d(p[3], z[0]) + d(p[0], z[1]) + d(p[2], z[1]) + d(p[3], z[1])) / 6
    assert torch.allclose(siam(x1, x2, small), by_hand, atol=1e-6)

    byol = BYOL(enc, 16, 32, 16).eval()
    loss = byol(x1, x2, small)
    loss.backward()
    assert all(q.grad is None for q in byol.target_parameters())  # targets: the global views, no gradient
    t = [byol.target_projector(byol.target_encoder(v)) for v in (x1, x2)]
    p = [byol.predictor(byol.projector(enc(v))) for v in (x1, x2, *small)]
    term = lambda a, b: (2 - 2 * F.cosine_similarity(a, b, dim=-1)).mean()  # noqa: E731
    by_hand = (term(p[1], t[0]) + term(p[2], t[0]) + term(p[3], t[0]) + term(p[0], t[1]) + term(p[2], t[1])
               + term(p[3], t[1])) * 2 / 6
    assert torch.allclose(loss, by_hand, atol=1e-6)


def test_multi_crop_trains_and_refuses_a_vit(tmp_path) -> None:
    from clipforge.errors import ConfigError
    from clipforge.ssl.trainer import train_ssl

    base = {"method": "simclr", "data": "digits", "image_size": 16, "embed_dim": 16, "proj_hidden": 32,
            "proj_out": 16, "epochs": 1, "max_steps": 2, "batch_size": 64, "eval_every_steps": 0,
            "tensorboard": False, "eval_linear_probe": False, "out_dir": str(tmp_path / "run"),
            "augment": {"small_crops": 2, "small_crop_size": 8},
            "encoder": {"type": "resnet", "layers": [1, 1, 1, 1], "width": 8, "head_width": 8, "stem": "small"}}
    _, state = train_ssl(SSLConfig.from_dict(base), progress=False)
    assert state.step == 2
    vit = {**base, "encoder": {"type": "vit", "patch_size": 4, "width": 16, "layers": 1, "heads": 2}}
    with pytest.raises(ConfigError, match="needs a resnet encoder"):
        train_ssl(SSLConfig.from_dict(vit), progress=False)
