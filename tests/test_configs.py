from __future__ import annotations

import pytest
import torch

from clipforge.errors import ConfigError
from clipforge.models import CLIP, CLIPConfig, get_config, list_configs


def _count(name: str) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in CLIP(get_config(name)).parameters())


@pytest.mark.parametrize(("name", "params"), [("ViT-B-32", 151_277_313), ("RN50", 102_007_137),
                                               ("ViT-B/32", 151_277_313)])
def test_parameter_counts_match_open_clip(name: str, params: int) -> None:
    assert _count(name) == params


@pytest.mark.parametrize("name", list_configs())
def test_named_configs_round_trip_json(name: str) -> None:
    cfg = get_config(name)
    assert CLIPConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize("name", ["tiny-vit-32", "tiny-rn-64"])
def test_small_configs_run_forward_and_backward(name: str) -> None:
    cfg = get_config(name)
    model = CLIP(cfg)
    model.set_grad_checkpointing(True)
    images = torch.randn(2, 3, cfg.vision.image_size, cfg.vision.image_size)
    tokens = torch.randint(1, 100, (2, cfg.text.context_length))
    tokens[:, 5] = cfg.text.vocab_size - 1
    img, txt, scale = model(images, tokens)
    assert img.shape == txt.shape == (2, cfg.embed_dim)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(2))
    (scale * img @ txt.T).logsumexp(0).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_gradient_checkpointing_gives_same_gradients() -> None:
    cfg = get_config("tiny-rn-64")
    torch.manual_seed(0)
    model = CLIP(cfg).train()
    images = torch.randn(2, 3, 64, 64)
    tokens = torch.randint(1, 100, (2, 77))
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        img, txt, scale = model(images, tokens)
        (scale * img @ txt.T).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_logit_scale_init_and_clamp() -> None:
    model = CLIP(get_config("tiny-vit-32"))
    assert model.logit_scale.exp().item() == pytest.approx(1 / 0.07)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    model.clamp_logit_scale_()
    assert model.logit_scale.exp().item() == pytest.approx(100.0)


def test_unknown_config_key_is_named() -> None:
    d = get_config("tiny-vit-32").to_dict()
    d["vision"]["depth"] = 3
    with pytest.raises(ConfigError, match="depth"):
        CLIPConfig.from_dict(d)


def test_unknown_named_config() -> None:
    with pytest.raises(ConfigError, match="ViT-Z-99"):
        get_config("ViT-Z-99")


def test_padding_trim_is_exact() -> None:
    torch.manual_seed(0)
    model = CLIP(get_config("tiny-vit-32")).eval()
    tokens = torch.zeros(3, 77, dtype=torch.long)
    for i, n in enumerate((4, 9, 15)):
        tokens[i, :n] = torch.randint(1, 1000, (n,))
        tokens[i, n] = 49407
    with torch.no_grad():
        model.text.trim_padding = False
        full = model.encode_text(tokens)
        model.text.trim_padding = True
        trimmed = model.encode_text(tokens)
    torch.testing.assert_close(trimmed, full, atol=1e-6, rtol=1e-6)
