"""ONNX export: the graphs under ONNX Runtime give the eager model's features, at any batch size and
text length, and a model that is not a CLIP is refused in one line."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from clipforge.checkpoints.onnx import OnnxCLIP, export_onnx  # noqa: E402
from clipforge.images.preprocess import Preprocess  # noqa: E402
from clipforge.models import CLIP, CLIPConfig, ResNetConfig, TextConfig  # noqa: E402
from clipforge.tokenizer import BPETokenizer  # noqa: E402
from helpers import micro_config  # noqa: E402


def _resnet_config() -> CLIPConfig:
    return CLIPConfig(embed_dim=16, vision=ResNetConfig(image_size=32, layers=[1, 1, 1, 1], width=8, head_width=8),
                      text=TextConfig(context_length=16, vocab_size=49408, width=32, heads=2, layers=1),
                      activation="gelu")


@pytest.mark.slow
@pytest.mark.parametrize("config", [micro_config(vocab=49408), _resnet_config()], ids=["vit", "resnet"])
def test_graphs_match_the_eager_model(tmp_path, config) -> None:
    torch.manual_seed(0)
    model = CLIP(config).eval()
    model.tokenizer = BPETokenizer(context_length=config.text.context_length)
    model.preprocess = Preprocess(image_size=config.vision.image_size)
    manifest = export_onnx(model, tmp_path / "onnx", source="tiny")
    assert max(manifest["max_abs_diff"].values()) < 1e-4
    runtime = OnnxCLIP(tmp_path / "onnx", threads=1)
    size = config.vision.image_size
    for n in (1, 7):  # batch sizes other than the export's
        pixels = torch.randn(n, 3, size, size)
        with torch.no_grad():
            want = model.encode_image(pixels, normalize=True)
        assert torch.allclose(runtime.encode_image(pixels), want, atol=1e-5)
    captions = ["a red circle", "two blue stars to the left of a large green hexagon on a textured background",
                "x"]
    tokens = runtime.tokenizer(captions)
    with torch.no_grad():
        want = model.encode_text(tokens, normalize=True)
    assert torch.allclose(runtime.encode_text(tokens), want, atol=1e-5)
    assert torch.allclose(runtime.encode_text(tokens[:1]), want[:1], atol=1e-5)  # a shorter trimmed length
    assert runtime.preprocess.image_size == size


def test_a_model_without_towers_is_refused(tmp_path, capsys) -> None:
    from clipforge.cli.main import main

    (tmp_path / "m").mkdir()
    assert main(["export", str(tmp_path / "m"), str(tmp_path / "out"), "--to", "onnx"]) == 2
    assert "no weights found" in capsys.readouterr().err
    with pytest.raises(Exception, match="not a CLIP"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "out")


@pytest.mark.slow
def test_embed_with_the_onnx_backend_gives_the_torch_backend_s_embeddings(tmp_path, monkeypatch) -> None:
    import json

    import numpy as np

    from clipforge.checkpoints import save
    from clipforge.cli.main import main
    from helpers import tiny_synth

    torch.manual_seed(0)
    config = _resnet_config()
    model = CLIP(config).eval()
    model.tokenizer = BPETokenizer(context_length=config.text.context_length)
    model.preprocess = Preprocess(image_size=config.vision.image_size)
    save(model, tmp_path / "model")
    data = tiny_synth(tmp_path / "data", n_train=8, n_val=12)
    monkeypatch.setenv("CLIPFORGE_CACHE", str(tmp_path / "cache"))
    for backend in ("torch", "onnx"):
        assert main(["embed", "--model", str(tmp_path / "model"), "--images", str(data / "val.csv"),
                     "--out", str(tmp_path / backend), "--backend", backend, "--workers", "1"]) == 0
    torch_part = np.load(tmp_path / "torch" / "part-00000.npy").astype(np.float32)
    onnx_part = np.load(tmp_path / "onnx" / "part-00000.npy").astype(np.float32)
    assert torch_part.shape == onnx_part.shape == (12, 16)
    assert np.abs(torch_part - onnx_part).max() < 2e-3  # float16 storage
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert manifest["inference"] == {"image": "onnx-fp32", "text": "onnx-fp32"}
    assert list((tmp_path / "cache" / "inference" / "onnx").glob("*/image.onnx"))  # exported once, reused
