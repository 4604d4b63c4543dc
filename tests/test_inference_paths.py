"""Inference paths (clipforge.inference): each path gives eager fp32's features within the agreement
bound through the model's own encode calls, the choice is the fastest path that agrees, it is
measured once per model and machine, and the commands take --backend/--precision."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

import clipforge
from clipforge.cli.main import main
from clipforge.errors import ConfigError
from clipforge.evaluation.cache import model_fingerprint
from clipforge.inference import choice
from clipforge.inference.choice import AGREEMENT, MIN_GAIN, apply_paths, candidates, choose_paths, pick
from clipforge.inference.paths import EAGER_FP32, CastTower, CompiledTower, InferencePath
from clipforge.models import CLIP, CLIPConfig, ResNetConfig, TextConfig
from clipforge.tokenizer import BPETokenizer
from helpers import micro_config, tiny_synth


def _model(resnet: bool = False) -> CLIP:
    torch.manual_seed(0)
    config = (CLIPConfig(embed_dim=16, vision=ResNetConfig(image_size=32, layers=[1, 1, 1, 1], width=8, head_width=8),
                         text=TextConfig(context_length=16, vocab_size=49408, width=32, heads=2, layers=1))
              if resnet else micro_config(vocab=49408))
    model = CLIP(config).eval()
    model.tokenizer = BPETokenizer(context_length=config.text.context_length)
    return model


def _features(model: CLIP) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    size = model.config.vision.image_size
    pixels = torch.randn(6, 3, size, size)
    tokens = model.tokenizer(["a red circle", "two blue stars", "a photo of a dog", "x", "a cat", "a green square"])
    with torch.no_grad():
        return model.encode_image(pixels, normalize=True), model.encode_text(tokens, normalize=True)


@pytest.mark.parametrize("resnet", [False, True], ids=["vit", "resnet"])
@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_a_path_runs_through_the_model_s_own_encoders_and_agrees_with_eager_fp32(resnet, precision) -> None:
    model = _model(resnet)
    want_img, want_txt = _features(model)
    fast = apply_paths(copy.deepcopy(model), {"image": InferencePath("torch", precision),
                                              "text": InferencePath("torch", precision)})
    got_img, got_txt = _features(fast)
    assert got_img.dtype == got_txt.dtype == torch.float32
    for got, want in ((got_img, want_img), (got_txt, want_txt)):
        assert torch.nn.functional.cosine_similarity(got, want).min() > 0.99
        assert not torch.equal(got, want)  # the path really ran
    assert fast.inference_paths == {"image": f"torch-{precision}", "text": f"torch-{precision}"}
    assert fast.visual.config == model.visual.config  # the tower's attributes show through the wrapper


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile's inductor needs a C++ compiler")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_compiled_path_agrees_with_eager_at_any_batch_size(precision) -> None:
    model = _model()
    want_img, want_txt = _features(model)
    fast = apply_paths(copy.deepcopy(model), {"image": InferencePath("compile", precision),
                                              "text": InferencePath("compile", precision)})
    assert isinstance(fast.visual, CompiledTower) and fast.visual.config == model.visual.config
    got_img, got_txt = _features(fast)
    bound = 0.9999 if precision == "fp32" else 0.99
    for got, want in ((got_img, want_img), (got_txt, want_txt)):
        assert got.dtype == torch.float32
        assert torch.nn.functional.cosine_similarity(got, want).min() > bound
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():  # a last, smaller batch runs on the same compiled tower
        got, want = fast.encode_image(pixels, normalize=True), model.encode_image(pixels, normalize=True)
    assert torch.nn.functional.cosine_similarity(got, want).min() > bound


def test_bf16_is_the_model_with_bf16_weights_channels_last_for_a_resnet() -> None:
    model = _model(resnet=True)
    reference = copy.deepcopy(model).to(torch.bfloat16)  # written out: the weights cast, the input cast
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = reference.encode_image(pixels.to(torch.bfloat16)).float()
        fast = apply_paths(model, {"image": InferencePath("torch", "bf16")})
        got = fast.encode_image(pixels)
    assert isinstance(fast.visual, CastTower) and fast.visual.channels_last
    assert torch.allclose(got, want, atol=1e-2, rtol=1e-2)


def test_the_fingerprint_is_the_loaded_weights_whatever_the_path() -> None:
    model = _model()
    before = model_fingerprint(copy.deepcopy(model))
    fast = apply_paths(model, {"image": InferencePath("torch", "bf16"), "text": InferencePath("torch", "bf16")})
    assert model_fingerprint(fast) == before  # indexes built with either path name the same model


def test_pick_takes_the_fastest_path_that_agrees_and_beats_eager_fp32() -> None:
    def row(path: str, speedup: float, cosine: float) -> dict:
        return {"path": path, "speedup": speedup, "min_cosine": cosine}

    rows = [row("torch-fp32", 1.0, 1.0), row("torch-bf16", 3.0, AGREEMENT + 1e-4), row("torch-int8", 4.0, 0.99),
            row("onnx-fp32", 2.0, 1.0), {"path": "torch-fp16", "error": "RuntimeError"}]
    assert pick(rows) == InferencePath("torch", "bf16")  # int8 is faster but does not agree
    assert pick([rows[0], row("onnx-fp32", MIN_GAIN - 0.01, 1.0)]) == EAGER_FP32  # not worth leaving fp32 for
    assert pick([rows[0], rows[2], rows[4]]) == EAGER_FP32
    # Equal features are worth 10%: bf16 at 2.1x does not displace ONNX fp32 at 2.0x; at 2.3x it does.
    assert pick([rows[0], row("onnx-fp32", 2.0, 1.0), row("torch-bf16", 2.1, 0.9999)]) == InferencePath("onnx", "fp32")
    assert pick([rows[0], row("onnx-fp32", 2.0, 1.0), row("torch-bf16", 2.3, 0.9999)]) == InferencePath("torch", "bf16")


def test_candidates_follow_the_request_and_the_device() -> None:
    cpu = torch.device("cpu")
    assert candidates(cpu, "torch", "fp32") == [EAGER_FP32]
    assert candidates(cpu, "onnx", "auto") == [InferencePath("onnx", "fp32")]
    assert candidates(cpu, "torch", "bf16") == [InferencePath("torch", "bf16")]  # asked for: even where emulated
    assert all(p.backend == "torch" for p in candidates(cpu, "torch", "auto"))
    assert candidates(cpu)[0] == EAGER_FP32 and InferencePath("torch", "int8") in candidates(cpu)
    assert candidates(cpu, "compile", "fp32") == [InferencePath("compile", "fp32")]
    assert all(p.backend != "compile" for p in candidates(cpu))  # auto never pays the compile time
    for backend, precision, message in (("onnx", "bf16", "fp32 graphs"), ("torch", "fp16", "CUDA"),
                                        ("compile", "int8", "--backend torch"),
                                        ("tensorrt", "auto", "--backend"), ("auto", "fp8", "--precision")):
        with pytest.raises(ConfigError, match=message):
            choice.check_request(backend, precision, cpu)


def test_auto_measures_once_per_model_and_machine_then_reads_the_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CLIPFORGE_CACHE", str(tmp_path / "cache"))
    model = _model()
    paths, report = choose_paths(model, torch.device("cpu"), "torch", "auto")
    assert set(paths) == {"image", "text"}
    for tower, rows in report["towers"].items():
        assert rows[0]["path"] == "torch-fp32" and rows[0]["speedup"] == 1.0
        assert {r["path"] for r in rows} == {p.label for p in candidates(torch.device("cpu"), "torch", "auto")}
        assert paths[tower] == pick(rows)
        chosen = next(r for r in rows if r["path"] == paths[tower].label)
        assert chosen["min_cosine"] >= AGREEMENT
    (cached,) = (tmp_path / "cache" / "inference").glob("*.json")
    assert json.loads(cached.read_text())["machine"]["threads"] == torch.get_num_threads()

    def fail(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(choice, "measure_paths", fail)
    assert choose_paths(model, torch.device("cpu"), "torch", "auto")[0] == paths
    assert choose_paths(model, torch.device("cpu"), "torch", "fp32")[0] == {"image": EAGER_FP32, "text": EAGER_FP32}


@pytest.mark.slow
def test_commands_take_backend_and_precision(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("CLIPFORGE_CACHE", str(tmp_path / "cache"))
    model = _model()
    model.preprocess = clipforge.images.preprocess.Preprocess(image_size=model.config.vision.image_size)
    clipforge.save(model, tmp_path / "m")
    data = tiny_synth(tmp_path / "data", n_train=8, n_val=12)
    base = ["eval", "retrieval", "--model", str(tmp_path / "m"), "--dataset", str(data / "val.csv")]
    recalls = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"res-{precision}"
        assert main([*base, "--out", str(out), "--backend", "torch", "--precision", precision]) == 0
        (result,) = out.rglob("*.json")
        saved = json.loads(result.read_text())
        assert saved["settings"]["inference"] == {"image": f"torch-{precision}", "text": f"torch-{precision}"}
        recalls[precision] = saved["metrics"]
    # A cached fp32 feature file is not read back as bf16 features: each path has its own.
    assert len(list((tmp_path / "cache" / "features").glob("*.safetensors"))) == 2
    for key, value in recalls["fp32"].items():
        if "recall" in key:
            assert abs(recalls["bf16"][key] - value) <= 1 / 12 + 1e-9  # at most one query of 12 moves
    # embed with the users' default (auto), which the tests' environment otherwise pins to eager fp32
    assert main(["embed", "--model", str(tmp_path / "m"), "--images", str(data / "val.csv"), "--out",
                 str(tmp_path / "auto"), "--backend", "auto", "--precision", "auto", "--workers", "1"]) == 0
    manifest = json.loads((tmp_path / "auto" / "manifest.json").read_text())
    allowed = {p.label for p in candidates(torch.device("cpu"))}
    assert set(manifest["inference"]) == {"image", "text"} and set(manifest["inference"].values()) <= allowed
    assert list((tmp_path / "cache" / "inference").glob("*.json"))  # measured once, cached
    capsys.readouterr()
    assert main(["embed", "--model", str(tmp_path / "m"), "--images", str(data / "val.csv"), "--out",
                 str(tmp_path / "emb"), "--precision", "fp16", "--device", "cpu"]) == 2
    assert "fp16 needs a CUDA device" in capsys.readouterr().err
    assert main(["classify", "--model", str(tmp_path / "m"), "--labels", "a,b", "--backend", "onnx", "--precision",
                 "int8", str(data / "val" / "000000.png")]) == 2
    assert "--backend torch" in capsys.readouterr().err
