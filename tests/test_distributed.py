"""Two gloo processes give the same gradients (and training) as one process on the global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clipforge.engine.distributed import DistInfo, reduce_gradients
from clipforge.losses import clip_loss
from clipforge.models import CLIP
from clipforge.training.task import contrastive_backward
from helpers import micro_config, tiny_synth, tiny_train_config


def _join(rank: int, world: int, init: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.set_num_threads(1)  # two processes on two cores gain nothing from more


def _leave() -> None:
    """Leave the group and end the worker without the interpreter's finalisation: there, gloo's
    threads made a worker abort with SIGABRT ("terminate called without an active exception", no
    Python frame) in about 1 run in 30, after its results were written, which failed CI. Neither a
    barrier before leaving nor one torch thread stopped it."""
    dist.destroy_process_group()
    os._exit(0)


def _batch(n: int):
    cfg = micro_config()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, 16, 16, generator=g, dtype=torch.float64)
    tokens = torch.randint(1, cfg.text.vocab_size - 2, (n, cfg.text.context_length), generator=g)
    tokens[:, 5] = cfg.text.vocab_size - 1
    return images, tokens


def _model() -> CLIP:
    torch.manual_seed(0)
    model = CLIP(micro_config()).double()
    with torch.no_grad():
        model.logit_scale.fill_(2.0)
    return model


def _worker(rank: int, world: int, init: str, out: str, micro: int | None) -> None:
    _join(rank, world, init)
    model = _model()
    images, tokens = _batch(8)
    per = 8 // world
    sl = slice(rank * per, (rank + 1) * per)
    info = DistInfo(rank, world, rank)
    loss = contrastive_backward(model, images[sl], tokens[sl], clip_loss, micro, dist_info=info)
    reduce_gradients(model, info)
    if rank == 0:
        torch.save({"loss": loss, **{n: p.grad for n, p in model.named_parameters()}}, out)
    _leave()


@pytest.mark.slow
@pytest.mark.parametrize("micro", [None, 2])
def test_two_processes_equal_one(tmp_path, micro) -> None:
    out = str(tmp_path / "grads.pt")
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'store'}", out, micro), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    model = _model()
    images, tokens = _batch(8)
    loss = contrastive_backward(model, images, tokens, clip_loss)
    torch.testing.assert_close(got["loss"], loss, rtol=1e-12, atol=0)
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-9, atol=1e-12, msg=name)


COCA = {"name": "coca-tiny", "tokenizer": "train", "vocab_size": 300, "context_length": 16,
        "overrides": {"vision": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
                      "text": {"width": 32, "layers": 1, "heads": 2}, "decoder": {"width": 32, "layers": 1, "heads": 2},
                      "embed_dim": 32, "attn_pooler_queries": 5, "attn_pooler_heads": 2}}


@pytest.mark.slow
@pytest.mark.parametrize("model", ["clip", "coca"])
def test_torchrun_training_matches_single_process(tmp_path, model) -> None:
    """The whole trainer under torchrun with 2 gloo ranks ends with the single-process weights
    (for a CoCa too: its captioning loss is normalised over the global batch's tokens)."""
    import json

    from safetensors.torch import load_file

    data = tiny_synth(tmp_path / "data", n_train=64)
    weights = {}
    for world in (1, 2):
        cfg = tiny_train_config(data, tmp_path / f"run{world}", epochs=1, micro_batch_size=4)
        if model == "coca":
            cfg["model"] = COCA
        cfg_path = tmp_path / f"cfg{world}.json"
        cfg_path.write_text(json.dumps(cfg))
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CLIPFORGE_THREADS": "1"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world), "--master-port",
               str(29500 + os.getpid() % 1000 + world), "-m", "clipforge.cli.main", "train", "--config",
               str(cfg_path), "--no-progress"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        weights[world] = load_file(str(tmp_path / f"run{world}" / "model" / "model.safetensors"))
    for k in weights[1]:
        torch.testing.assert_close(weights[2][k], weights[1][k], rtol=1e-4, atol=1e-5, msg=k)


# --- the loss library's distributed forms ---------------------------------------------------

def _loss_setup(dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    inputs = torch.randn(8, 6, generator=g, dtype=dtype)
    texts = torch.randn(8, 6, generator=g, dtype=dtype)
    w = torch.randn(6, 4, generator=g, dtype=dtype)
    return inputs, texts, w


def _loss_value(kind: str, mode: str | None, img, txt, log_scale, bias):
    from clipforge.losses import clip_loss, siglip_loss
    from clipforge.losses.distributed import distributed_clip_loss, distributed_siglip_loss

    if mode is None:
        return clip_loss(img, txt, log_scale.exp()) if kind == "clip" else siglip_loss(img, txt, log_scale.exp(), bias)
    if kind == "clip":
        return distributed_clip_loss(img, txt, log_scale.exp(), mode=mode, tiled=(mode == "gather"))
    return distributed_siglip_loss(img, txt, log_scale.exp(), bias, mode=mode)


def _loss_worker(rank: int, world: int, init: str, out: str, kind: str, mode: str, split: int = 4) -> None:
    _join(rank, world, init)
    inputs, texts, w = _loss_setup()
    w = w.clone().requires_grad_()
    log_scale = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    sl = slice(0, split) if rank == 0 else slice(split, 8)  # split != 4: ranks hold unequal batches
    img = torch.nn.functional.normalize(inputs[sl] @ w, dim=-1)
    txt = torch.nn.functional.normalize(texts[sl] @ w, dim=-1)
    _loss_value(kind, mode, img, txt, log_scale, bias).backward()
    for t in (w, log_scale, bias):  # what DDP does: average the gradients over ranks
        g = t.grad if t.grad is not None else torch.zeros_like(t)
        dist.all_reduce(g)
        t.grad = g / world
    if rank == 0:
        torch.save({"w": w.grad, "scale": log_scale.grad, "bias": bias.grad}, out)
    _leave()


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "mode"), [("clip", "gather"), ("clip", "local"), ("siglip", "gather"),
                                            ("siglip", "local")])
@pytest.mark.parametrize("split", [4, 5])
def test_distributed_losses_equal_one_process(tmp_path, kind, mode, split) -> None:
    out = str(tmp_path / "g.pt")
    mp.spawn(_loss_worker, args=(2, f"file://{tmp_path / 'store'}", out, kind, mode, split), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    inputs, texts, w = _loss_setup()
    w.requires_grad_()
    log_scale = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    img = torch.nn.functional.normalize(inputs @ w, dim=-1)
    txt = torch.nn.functional.normalize(texts @ w, dim=-1)
    _loss_value(kind, None, img, txt, log_scale, bias).backward()
    torch.testing.assert_close(got["w"], w.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got["scale"], log_scale.grad, rtol=1e-9, atol=1e-12)
    if kind == "siglip":
        torch.testing.assert_close(got["bias"], bias.grad, rtol=1e-9, atol=1e-12)


# --- SimCLR: the engine's gradient averaging with NT-Xent over all-gathered views ------------------

def _simclr():
    from clipforge.ssl.methods import SimCLR

    torch.manual_seed(0)
    method = SimCLR(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8)), 8, 0.5, 16, 6).double()
    # BatchNorm in the projector normalises per rank (as in any data-parallel SimCLR without SyncBN):
    # frozen statistics make the function the same on one process and on two.
    method.projector.eval()
    g = torch.Generator().manual_seed(4)
    return method, torch.randn(8, 3, 2, 2, generator=g, dtype=torch.float64), \
        torch.randn(8, 3, 2, 2, generator=g, dtype=torch.float64)


def _simclr_worker(rank: int, world: int, init: str, out: str) -> None:
    from clipforge.engine.distributed import DistInfo as Info
    from clipforge.engine.distributed import average_gradients

    _join(rank, world, init)
    method, v1, v2 = _simclr()
    sl = slice(rank * 4, (rank + 1) * 4)
    method(v1[sl], v2[sl]).backward()
    average_gradients(method, Info(rank, world, rank))  # what SSLTask.reduce_gradients does
    if rank == 0:
        torch.save({n: p.grad for n, p in method.named_parameters()}, out)
    _leave()


@pytest.mark.slow
def test_simclr_two_processes_equal_one(tmp_path) -> None:
    out = str(tmp_path / "g.pt")
    mp.spawn(_simclr_worker, args=(2, f"file://{tmp_path / 'store'}", out), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    method, v1, v2 = _simclr()
    method(v1, v2).backward()
    for name, p in method.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.slow
def test_eval_under_torchrun_equals_one_process(tmp_path) -> None:
    """Feature extraction is split over 2 gloo ranks; the zero-shot result equals one process's."""
    import json

    from PIL import Image

    import clipforge

    clipforge.save(clipforge.build("tiny-vit-32"), tmp_path / "m")
    for c, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255)), ("green", (0, 200, 0))):
        (tmp_path / "f" / c).mkdir(parents=True)
        for i in range(7):
            Image.new("RGB", (16, 16), tuple(max(0, v - 20 * i) for v in colour)).save(tmp_path / "f" / c / f"{i}.png")
    (tmp_path / "f" / "red" / "bad.png").write_bytes(b"not an image")
    results = {}
    for world in (1, 2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CLIPFORGE_THREADS": "1"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world), "--master-port",
               str(29800 + os.getpid() % 100 + world), "-m", "clipforge.cli.main", "eval", "zeroshot", "--model",
               str(tmp_path / "m"), "--dataset", str(tmp_path / "f"), "--out", str(tmp_path / f"res{world}"),
               "--batch-size", "4", "--no-cache", "--device", "cpu"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stderr.count("1 unreadable image(s) left out") == 1  # said once, by rank 0
        (path,) = (tmp_path / f"res{world}").glob("*.json")
        results[world] = json.loads(path.read_text())
    assert results[2]["metrics"] == results[1]["metrics"] and results[1]["settings"]["n_images"] == 21


# --- a mean over caption tokens: ranks weighted by their tokens ----------------------------------

def _prefix_task(rank: int = 0, world: int = 1):
    from clipforge.captioning.config import CaptionTrainConfig
    from clipforge.captioning.lm import LMConfig
    from clipforge.captioning.prefix import PrefixCaptioner, PrefixConfig
    from clipforge.captioning.train import PrefixTask

    cfg = PrefixConfig(clip_dim=8, prefix_length=2, lm=LMConfig(vocab_size=20, context_length=10, width=8,
                                                                layers=1, heads=2), start_id=18, end_id=19)
    torch.manual_seed(0)
    model = PrefixCaptioner(cfg).double()
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(8, 8, generator=g, dtype=torch.float64)
    tokens = torch.zeros(8, 8, dtype=torch.long)
    for i, n in enumerate([6, 5, 6, 4, 1, 2, 1, 1]):  # rank 0's captions are much longer than rank 1's
        tokens[i, : n + 2] = torch.tensor([18, *torch.randint(1, 18, (n,), generator=g).tolist(), 19])
    task = PrefixTask(model, emb, tokens, 19, CaptionTrainConfig(batch_size=8), DistInfo(rank, world, rank),
                      torch.device("cpu"), list(model.parameters()))
    return task, emb, tokens


def _prefix_worker(rank: int, world: int, init: str, out: str, micro: int | None) -> None:
    from clipforge.engine.accumulate import forward_backward
    from clipforge.engine.context import StepContext

    _join(rank, world, init)
    task, emb, tokens = _prefix_task(rank, world)
    sl = slice(rank * 4, (rank + 1) * 4)
    ctx = StepContext(task.info, torch.device("cpu"), "fp32", micro, task.optimizers(), task)
    forward_backward(task, (emb[sl], tokens[sl]), ctx)
    task.reduce_gradients(task.info)
    if rank == 0:
        torch.save({n: p.grad for n, p in task.model.named_parameters()}, out)
    _leave()


@pytest.mark.slow
@pytest.mark.parametrize("micro", [None, 3])
def test_a_token_mean_loss_on_two_processes_equals_one(tmp_path, micro) -> None:
    from clipforge.engine.accumulate import forward_backward
    from clipforge.engine.context import StepContext

    out = str(tmp_path / "g.pt")
    mp.spawn(_prefix_worker, args=(2, f"file://{tmp_path / 'store'}", out, micro), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    task, emb, tokens = _prefix_task()
    forward_backward(task, (emb, tokens), StepContext(DistInfo(), torch.device("cpu"), "fp32", None,
                                                      task.optimizers(), task))
    for name, p in task.model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-9, atol=1e-12, msg=name)
