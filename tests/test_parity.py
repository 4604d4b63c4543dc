"""Number-for-number parity with open_clip and transformers on the shared peer fixtures."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import clipforge
from conftest import PEERS

CASES = ["openclip_vit_tiny", "openclip_rn_tiny", "hf_clip_tiny"]


@pytest.mark.parametrize("name", CASES)
def test_features_and_logits_match_peer(name: str) -> None:
    folder = PEERS / name
    model = clipforge.load(folder)
    inputs = load_file(str(folder / "inputs.safetensors"))
    expected = load_file(str(folder / "expected.safetensors"))
    with torch.no_grad():
        image_features = model.encode_image(inputs["images"])
        text_features = model.encode_text(inputs["text"])
        img, txt, scale = model(inputs["images"], inputs["text"])
    logits_per_image = scale * img @ txt.T
    tol = dict(atol=1e-5, rtol=0)
    torch.testing.assert_close(image_features, expected["image_features"], **tol)
    torch.testing.assert_close(text_features, expected["text_features"], **tol)
    torch.testing.assert_close(logits_per_image, expected["logits_per_image"], **tol)
    torch.testing.assert_close(logits_per_image.T, expected["logits_per_text"], **tol)
    if "logit_scale" in expected:
        torch.testing.assert_close(scale.reshape(1), expected["logit_scale"], **tol)


@pytest.mark.parametrize("name", CASES)
def test_activation_read_from_source(name: str) -> None:
    # All three fixtures were made with QuickGELU; the loader must know it without being told.
    assert clipforge.load(PEERS / name).config.activation == "quick_gelu"


def test_weights_file_finds_sibling_openclip_config() -> None:
    model = clipforge.load(PEERS / "openclip_vit_tiny" / "model.safetensors")
    assert model.config.vision.patch_size == 8 and model.config.embed_dim == 32
