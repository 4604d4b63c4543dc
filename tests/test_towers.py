"""Per-token tower outputs (what captioners and CoCa cross-attend to), consistent with the pooled ones."""

from __future__ import annotations

import pytest
import torch

import clipforge
from helpers import micro_config


@pytest.mark.parametrize("name", ["tiny-vit-32", "tiny-rn-64"])
def test_image_tokens_and_pooled_agree(name) -> None:
    torch.manual_seed(0)
    model = clipforge.build(name).eval()
    size = model.config.vision.image_size
    images = torch.randn(2, 3, size, size)
    out = model.encode_image_tokens(images)
    torch.testing.assert_close(out["pooled"], model.encode_image(images))
    if name.startswith("tiny-vit"):
        grid = size // model.config.vision.patch_size
        assert out["tokens"].shape == (2, grid * grid, model.config.vision.width)
        # Tokens are layer-normed per position: zero mean, unit variance before the affine.
        ln = model.visual.ln_post
        normed = (out["tokens"] - ln.bias) / ln.weight
        torch.testing.assert_close(normed.mean(-1), torch.zeros(2, grid * grid), atol=1e-4, rtol=0)
    else:
        assert out["tokens"].shape[0] == 2 and out["tokens"].shape[1] == (size // 32) ** 2


def test_text_tokens_are_causal_and_pool_at_the_end_token() -> None:
    torch.manual_seed(0)
    cfg = micro_config()
    model = clipforge.CLIP(cfg).eval()
    tokens = torch.randint(1, cfg.text.vocab_size - 2, (2, cfg.text.context_length))
    tokens[0, 6], tokens[1, 9] = cfg.text.vocab_size - 1, cfg.text.vocab_size - 1
    out = model.encode_text_tokens(tokens)
    torch.testing.assert_close(out["pooled"], model.encode_text(tokens))
    assert out["tokens"].shape == (2, cfg.text.context_length, cfg.text.width) and out["eot"].tolist() == [6, 9]
    changed = tokens.clone()
    changed[:, 10:] = 3  # later tokens cannot change earlier positions (causal attention)
    torch.testing.assert_close(model.encode_text_tokens(changed)["tokens"][:, :10], out["tokens"][:, :10])
    projected = out["tokens"][torch.arange(2), out["eot"]] @ model.text.text_projection
    torch.testing.assert_close(projected, out["pooled"])
