"""Round trips between clipforge, open_clip, OpenAI and Hugging Face checkpoints."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import clipforge
from clipforge.checkpoints.openclip import config_from_openclip
from clipforge.cli.main import main
from clipforge.errors import ActivationMismatchError, CheckpointError
from clipforge.models import CLIP, CLIPConfig, TextConfig, ViTConfig
from conftest import PEERS


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _outputs(model: CLIP, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = load_file(str(PEERS / name / "inputs.safetensors"))
    with torch.no_grad():
        return model.encode_image(inputs["images"]), model.encode_text(inputs["text"])


@pytest.mark.parametrize("name", ["openclip_vit_tiny", "openclip_rn_tiny"])
@pytest.mark.parametrize("layout", ["flat", "hub"])
def test_open_clip_round_trip_is_identical(tmp_path, name: str, layout: str) -> None:
    original = load_file(str(PEERS / name / "model.safetensors"))
    model = clipforge.load(PEERS / name)
    clipforge.save(model, tmp_path / "cf")
    clipforge.export_openclip(clipforge.load(tmp_path / "cf"), tmp_path / "oc", layout=layout)
    weights, config = {"flat": ("oc.safetensors", "oc.json"),
                       "hub": ("open_clip_model.safetensors", "open_clip_config.json")}[layout]
    _assert_same_tensors(original, load_file(str(tmp_path / "oc" / weights)))
    cfg = json.loads((tmp_path / "oc" / config).read_text())
    if layout == "flat":
        # What open_clip's registry (factory._rescan_model_configs) accepts: the three keys at the top
        # level; any other top-level key would reach open_clip.CLIP(**cfg) and fail.
        assert {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg) <= {"embed_dim", "vision_cfg", "text_cfg",
                                                                      "quick_gelu"}
        peer = json.loads((PEERS / name / "config.json").read_text())
        assert config_from_openclip(cfg) == config_from_openclip(peer)
    else:
        cfg = cfg["model_cfg"]
    assert cfg["quick_gelu"] is True
    # And the exported folder loads back to the same outputs.
    for a, b in zip(_outputs(model, name), _outputs(clipforge.load(tmp_path / "oc"), name)):
        assert torch.equal(a, b)


def test_convert_refuses_to_overwrite_without_the_flag(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert main(["convert", str(PEERS / "openclip_vit_tiny"), str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "keep me" and not (out / "config.json").exists()
    assert main(["convert", str(PEERS / "openclip_vit_tiny"), str(out), "--overwrite"]) == 0
    assert (out / "config.json").is_file()
    assert main(["convert", str(PEERS / "openclip_vit_tiny"), str(out / "mine.txt")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_hf_round_trip_is_identical(tmp_path) -> None:
    original = load_file(str(PEERS / "hf_clip_tiny" / "model.safetensors"))
    model = clipforge.load(PEERS / "hf_clip_tiny")
    clipforge.save(model, tmp_path / "cf")
    clipforge.export_hf(clipforge.load(tmp_path / "cf"), tmp_path / "hf")
    _assert_same_tensors(original, load_file(str(tmp_path / "hf" / "model.safetensors")))
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    peer = json.loads((PEERS / "hf_clip_tiny" / "config.json").read_text())
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                "hidden_act", "eos_token_id", "vocab_size", "max_position_embeddings"):
        assert cfg["text_config"][key] == peer["text_config"][key], key
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                "hidden_act", "image_size", "patch_size"):
        assert cfg["vision_config"][key] == peer["vision_config"][key], key
    assert cfg["projection_dim"] == peer["projection_dim"]


def test_native_round_trip_keeps_tokenizer_and_preprocess(tmp_path) -> None:
    from clipforge.tokenizer import TrainedBPETokenizer

    model = clipforge.build("tiny-vit-32")
    model.tokenizer = TrainedBPETokenizer.train(["a red circle", "a blue square"] * 10, vocab_size=270)
    model.preprocess.mean = (0.5, 0.5, 0.5)
    clipforge.save(model, tmp_path / "m")
    again = clipforge.load(tmp_path / "m")
    assert again.tokenizer.kind == "bpe"
    assert torch.equal(again.tokenizer(["a red square"]), model.tokenizer(["a red square"]))
    assert again.preprocess.mean == (0.5, 0.5, 0.5)
    _assert_same_tensors(model.state_dict(), again.state_dict())


def test_convert_cli_to_each_format(tmp_path) -> None:
    src = PEERS / "openclip_vit_tiny"
    for fmt in ("clipforge", "open_clip", "hf"):
        assert main(["convert", str(src), str(tmp_path / fmt), "--to", fmt]) == 0
        for a, b in zip(_outputs(clipforge.load(src), "openclip_vit_tiny"),
                        _outputs(clipforge.load(tmp_path / fmt), "openclip_vit_tiny")):
            torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_resnet_cannot_go_to_hf(tmp_path, capsys) -> None:
    assert main(["convert", str(PEERS / "openclip_rn_tiny"), str(tmp_path / "x"), "--to", "hf"]) == 2
    err = capsys.readouterr().err
    assert "ResNet" in err and len(err.strip().splitlines()) == 1


# --- activation detection -------------------------------------------------------------------

def test_activation_mismatch_is_refused_for_hf() -> None:
    gelu = clipforge.load(PEERS / "hf_clip_tiny").config
    gelu = CLIPConfig(embed_dim=gelu.embed_dim, vision=gelu.vision, text=gelu.text, activation="gelu")
    with pytest.raises(ActivationMismatchError, match="quick_gelu"):
        clipforge.load(PEERS / "hf_clip_tiny", config=gelu)


def test_activation_mismatch_is_refused_for_open_clip(tmp_path) -> None:
    cfg = json.loads((PEERS / "openclip_vit_tiny" / "config.json").read_text())
    cfg.pop("quick_gelu")
    (tmp_path / "gelu.json").write_text(json.dumps(cfg))
    with pytest.raises(ActivationMismatchError):
        clipforge.load(PEERS / "openclip_vit_tiny", config=tmp_path / "gelu.json")


# --- OpenAI checkpoints ---------------------------------------------------------------------

class _OpenAILayout(torch.nn.Module):
    """A clipforge model re-parented into OpenAI's module tree, to make a TorchScript archive."""

    def __init__(self, model: CLIP) -> None:
        super().__init__()
        self.visual = model.visual
        self.token_embedding = model.text.token_embedding
        self.positional_embedding = model.text.positional_embedding
        self.transformer = model.text.transformer
        self.ln_final = model.text.ln_final
        self.text_projection = model.text.text_projection
        self.logit_scale = model.logit_scale
        self.model = [model]  # a list hides it from module registration

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        img, txt, scale = self.model[0](images, tokens)
        return scale * img @ txt.T


def _openai_like_model() -> CLIP:
    # OpenAI's shapes rule: 64-wide heads in both towers.
    cfg = CLIPConfig(
        embed_dim=32,
        vision=ViTConfig(image_size=32, patch_size=8, width=64, layers=2, head_width=64),
        text=TextConfig(context_length=16, vocab_size=500, width=64, heads=1, layers=2),
        activation="quick_gelu",
    )
    torch.manual_seed(0)
    return CLIP(cfg).eval()


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_torchscript_archive_is_read_without_executing(tmp_path) -> None:
    model = _openai_like_model()
    images, tokens = torch.randn(2, 3, 32, 32), torch.randint(1, 499, (2, 16))
    tokens[:, 7] = 499
    traced = torch.jit.trace(_OpenAILayout(model), (images, tokens), check_trace=False)
    traced.save(str(tmp_path / "ViT-tiny.pt"))
    loaded = clipforge.load(tmp_path / "ViT-tiny.pt")
    assert loaded.config == model.config
    _assert_same_tensors(model.state_dict(), loaded.state_dict())
    with pytest.raises(ActivationMismatchError):
        gelu = CLIPConfig(embed_dim=32, vision=model.config.vision, text=model.config.text,
                          activation="gelu")
        clipforge.load(tmp_path / "ViT-tiny.pt", config=gelu)


def test_torchscript_with_foreign_globals_is_refused(tmp_path) -> None:
    import pickle
    import zipfile

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with zipfile.ZipFile(tmp_path / "evil.pt", "w") as zf:
        zf.writestr("evil/data.pkl", pickle.dumps(Evil(), protocol=2))
        zf.writestr("evil/code/__torch__.py", "")
    with pytest.raises(CheckpointError, match=r"refers to .*print"):
        clipforge.load(tmp_path / "evil.pt")


def test_openai_state_dict_with_named_config(tmp_path) -> None:
    model = _openai_like_model()
    sd = {k.removeprefix("text."): v for k, v in model.state_dict().items()}
    torch.save(sd, tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match="no model config"):
        clipforge.load(tmp_path / "weights.pt")
    loaded = clipforge.load(tmp_path / "weights.pt", config=model.config)
    _assert_same_tensors(model.state_dict(), loaded.state_dict())


def test_pickled_objects_are_not_loaded(tmp_path) -> None:
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"state_dict": Evil()}, f)
    with pytest.raises(CheckpointError, match="weights-only"):
        clipforge.load(tmp_path / "evil.pt", config="tiny-vit-32")


# --- checkpoints that do not fit ------------------------------------------------------------

def test_mismatched_checkpoint_lists_keys_in_one_message(tmp_path) -> None:
    shutil.copytree(PEERS / "openclip_vit_tiny", tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["vision_cfg"]["width"] = 128
    cfg["vision_cfg"]["layers"] = 3
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    sd = load_file(str(tmp_path / "m" / "model.safetensors"))
    sd["extra.weight"] = torch.zeros(1)
    save_file(sd, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        clipforge.load(tmp_path / "m")
    msg = str(info.value)
    assert "\n" not in msg
    assert "missing: visual.transformer.resblocks.2" in msg
    assert "unexpected: extra.weight" in msg
    assert "mismatched: visual.class_embedding (checkpoint (64,), model (128,))" in msg
    assert "more" in msg  # only the first keys are listed


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04broken"])
def test_unreadable_checkpoint_files(tmp_path, content: bytes) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        clipforge.load(path, config="tiny-vit-32")


@pytest.mark.parametrize(("section", "key", "value"), [
    ("vision_cfg", "ls_init_value", 1e-5), ("vision_cfg", "qk_norm", True),
    ("text_cfg", "scaled_cosine_attn", True), ("vision_cfg", "pos_embed_type", "sin_cos_2d"),
    ("text_cfg", "scale_fc", True), ("vision_cfg", "block_type", "custom"),
])
def test_unsupported_open_clip_option_is_refused(tmp_path, section, key, value) -> None:
    shutil.copytree(PEERS / "openclip_vit_tiny", tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg[section][key] = value
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=f"{section}.{key}"):
        clipforge.load(tmp_path / "m")
    cfg[section][key] = {"qk_norm": False, "scaled_cosine_attn": False, "pos_embed_type": "learnable",
                         "scale_fc": False, "block_type": "default"}.get(key)
    if cfg[section][key] is not None or key == "ls_init_value":
        (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
        clipforge.load(tmp_path / "m")  # the neutral value is accepted


def test_hf_export_loads_in_transformers(tmp_path) -> None:
    """The exported folder is read by transformers' own CLIPModel and gives the same features."""
    transformers = pytest.importorskip("transformers")
    model = clipforge.load(PEERS / "openclip_vit_tiny")  # an open_clip checkpoint, exported to HF
    clipforge.export_hf(model, tmp_path / "hf")
    hf = transformers.CLIPModel.from_pretrained(str(tmp_path / "hf"), local_files_only=True).eval()
    inputs = load_file(str(PEERS / "openclip_vit_tiny" / "inputs.safetensors"))
    with torch.no_grad():
        img = hf.get_image_features(pixel_values=inputs["images"])
        txt = hf.get_text_features(input_ids=inputs["text"])
    img = getattr(img, "pooler_output", img)
    txt = getattr(txt, "pooler_output", txt)
    ours_img, ours_txt = _outputs(model, "openclip_vit_tiny")
    torch.testing.assert_close(img, ours_img, atol=1e-5, rtol=0)
    torch.testing.assert_close(txt, ours_txt, atol=1e-5, rtol=0)


def test_refused_pickle_names_the_global_and_never_suggests_the_unsafe_path(tmp_path) -> None:
    import os

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"weight": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as info:
        clipforge.load(tmp_path / "evil.pt", config="tiny-vit-32")
    msg = str(info.value)
    assert f"{os.name == 'nt' and 'nt' or 'posix'}.system" in msg and "refused" in msg
    assert "weights_only" not in msg and "\n" not in msg
    # Not a pickle at all (a JPEG named .pt): said plainly.
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "photo.jpg")
    (tmp_path / "photo.pt").write_bytes((tmp_path / "photo.jpg").read_bytes())
    with pytest.raises(CheckpointError, match="photo.pt: not a torch checkpoint") as info:
        clipforge.load(tmp_path / "photo.pt", config="tiny-vit-32")
    assert "weights_only" not in str(info.value)


def test_saved_models_name_their_arch_and_an_unknown_one_is_refused(tmp_path) -> None:
    clipforge.save(clipforge.build("tiny-vit-32"), tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["arch"] == "clip"
    cfg["arch"] = "diffusion_unet"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unknown arch 'diffusion_unet'"):
        clipforge.load(tmp_path / "m")
