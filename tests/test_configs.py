from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import clipforge
from clipforge.checkpoints.openclip import config_from_openclip, state_dict_to_openclip
from clipforge.cli.main import main
from clipforge.errors import ConfigError
from clipforge.models import CLIP, CLIPConfig, get_config, list_configs
from clipforge.tokenizer import BPETokenizer
from conftest import FIXTURES


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
    assert type(cfg).from_dict(json.loads(cfg.to_json())) == cfg


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


# --- named configs follow open_clip's names and activations -----------------------------------

FULL_SIZE = ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336"]


@pytest.mark.parametrize("name", [*FULL_SIZE, *(f"{n}-quickgelu" for n in FULL_SIZE)])
def test_named_configs_equal_open_clips_json(name: str) -> None:
    """open_clip 3.3.0's model_configs/NAME.json (copied to the fixtures) is the reference."""
    reference = json.loads((FIXTURES / "open_clip_configs" / f"{name}.json").read_text())
    expected = config_from_openclip(reference, name)
    assert get_config(name) == expected
    assert expected.activation == ("quick_gelu" if name.endswith("-quickgelu") else "gelu")


@pytest.mark.parametrize(("openai_name", "name"), [("ViT-B/32", "ViT-B-32-quickgelu"),
                                                   ("ViT-L/14@336px", "ViT-L-14-336-quickgelu")])
def test_openai_spelling_names_openais_quickgelu_model(openai_name: str, name: str) -> None:
    assert get_config(openai_name) == get_config(name)


@pytest.mark.slow
def test_raw_state_dicts_load_by_name_with_open_clips_activation(tmp_path) -> None:
    """Raw weights of both kinds, in open_clip's layout and shapes, load by name with the right activation."""
    torch.manual_seed(0)
    images = torch.randn(2, 3, 224, 224)
    tokens = BPETokenizer()(["a photo of a cat", "a diagram"])
    features = {}
    for name in ("ViT-B-32", "ViT-B-32-quickgelu"):
        reference = json.loads((FIXTURES / "open_clip_configs" / f"{name}.json").read_text())
        torch.manual_seed(1)  # the same weights for both kinds
        model = CLIP(config_from_openclip(reference)).eval()
        torch.save(state_dict_to_openclip(model.state_dict()), tmp_path / "weights.pt")
        loaded = clipforge.load(tmp_path / "weights.pt", config=name)
        assert loaded.config.activation == ("quick_gelu" if "quickgelu" in name else "gelu")
        with torch.no_grad():
            features[name] = loaded.encode_image(images)
            torch.testing.assert_close(features[name], model.encode_image(images), rtol=0, atol=0)
            torch.testing.assert_close(loaded.encode_text(tokens), model.encode_text(tokens), rtol=0, atol=0)
    # The activation matters: the same weights give clearly different features.
    assert (features["ViT-B-32"] - features["ViT-B-32-quickgelu"]).abs().max() > 1e-3


# --- bad values give one-line errors naming the key -------------------------------------------

@pytest.mark.parametrize(("section", "key", "value"), [
    ("vision", "width", "wide"), ("vision", "width", "128"), ("vision", "patch_size", 0),
    ("vision", "head_width", 0), ("vision", "layers", -1), ("vision", "width", True),
    ("text", "heads", 0), ("text", "layers", -1), ("text", "context_length", 2.5), ("text", "mlp_ratio", "x"),
    (None, "embed_dim", 0), (None, "max_logit_scale", -1.0),
])
def test_bad_model_config_values_name_the_key(section, key: str, value) -> None:
    d = get_config("tiny-vit-32").to_dict()
    (d[section] if section else d)[key] = value
    with pytest.raises(ConfigError, match=rf"^{(section + '.') if section else ''}{key} must be") as info:
        CLIPConfig.from_dict(d)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("key", "value"), [("width", 1), ("head_width", 0), ("layers", [1, 1, 1]),
                                            ("layers", [1, 0, 1, 1]), ("head_width", 48)])
def test_bad_resnet_values_name_the_key(key: str, value) -> None:
    d = get_config("tiny-rn-64").to_dict()
    d["vision"][key] = value
    with pytest.raises(ConfigError, match=r"vision\.(width|head_width|layers)"):
        CLIPConfig.from_dict(d)


def test_info_reports_a_bad_config_in_one_line(tmp_path, capsys) -> None:
    d = get_config("tiny-vit-32").to_dict()
    d["vision"]["patch_size"] = 0
    (tmp_path / "bad.json").write_text(json.dumps(d))
    weights = tmp_path / "weights.safetensors"
    save_file({"x": torch.zeros(1)}, str(weights))
    assert main(["info", str(weights), "--config", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("clipforge: error:") and "vision.patch_size must be an integer >= 1" in err
    assert err.count("\n") == 1


def test_literal_options_are_checked_and_feed_the_cli_choices() -> None:
    from typing import get_args

    from clipforge.config import choices
    from clipforge.ssl.config import SSLConfig
    from clipforge.training.config import Loss, TrainConfig
    from clipforge.training.trainer import LOSSES

    # every configurable loss is implemented, and the reverse (bag_of_words is a task of its own, not a pair loss)
    assert set(get_args(Loss)) == set(LOSSES) | {"bag_of_words"}
    assert choices(TrainConfig, "precision") == ("fp32", "bf16", "fp16", "auto")
    assert choices(SSLConfig, "method") == ("simclr", "byol", "simsiam")
    with pytest.raises(ConfigError, match=r"^precision must be one of 'fp32', 'bf16', 'fp16', 'auto', got 'fp64'$"):
        TrainConfig.from_dict({"precision": "fp64"})
    with pytest.raises(ConfigError, match=r"^model\.text_pooling must be one of"):
        TrainConfig.from_dict({"model": {"text_pooling": "first"}})


def test_ssl_method_flag_and_option_must_agree(tmp_path, capsys) -> None:
    assert main(["ssl", "train", "--method", "byol", "method=simclr", f"out_dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert "--method byol conflicts with method=simclr" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_model_configs_use_the_shared_config_checks() -> None:
    d = get_config("tiny-vit-32").to_dict()
    d["vision"]["type"] = "mlp"
    with pytest.raises(ConfigError, match=r"^vision\.type must be one of 'vit', 'resnet', got 'mlp'$"):
        CLIPConfig.from_dict(d)
    d = get_config("tiny-vit-32").to_dict()
    d["text"]["depth"] = 3
    with pytest.raises(ConfigError, match=r"unknown option\(s\) text\.depth"):
        CLIPConfig.from_dict(d)
    old = get_config("tiny-rn-64").to_dict()
    del old["text"]["type"]  # saved before text configs had a type
    assert CLIPConfig.from_dict(old) == get_config("tiny-rn-64")


def test_configs_command_lists_the_cocas_too(capsys) -> None:
    assert main(["configs"]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("coca_ViT-B-32"))
    assert "coca" in line and "253.6M params" in line  # open_clip's coca_ViT-B-32 has 253.56M
