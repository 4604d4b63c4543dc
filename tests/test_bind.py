"""Binding modalities (clipforge.bind): the log-mel spectrogram against a slow numpy reference, the
WAV and depth readers on bad files, the synthetic depth maps, the bind task's loss against a slow
loop, save/load, and the CLI end to end (espeak-ng tests are skipped without it)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import wavfile

from clipforge.audio.mel import LOG_CENTRE, LOG_FLOOR, LOG_SCALE, LogMel, LogMelConfig, mel_filterbank
from clipforge.audio.wav import AudioReadError, read_wav
from clipforge.bind.inputs import DepthInput, ModalityReadError, SpeechInput
from clipforge.data.synthetic_speech import espeak_available

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (make test installs it "
                                  "as root; apt-get install espeak-ng)")


# ---- log-mel ----------------------------------------------------------------------------------------

def _slow_filters(n_freqs: int, n_mels: int, sr: int, f_min: float, f_max: float) -> np.ndarray:
    """HTK triangles written out one by one."""
    mel = lambda f: 2595 * math.log10(1 + f / 700)  # noqa: E731
    inv = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    centres = [inv(mel(f_min) + k * (mel(f_max) - mel(f_min)) / (n_mels + 1)) for k in range(n_mels + 2)]
    out = np.zeros((n_freqs, n_mels))
    for i in range(n_freqs):
        f = i * (sr / 2) / (n_freqs - 1)
        for m in range(n_mels):
            lo, mid, hi = centres[m], centres[m + 1], centres[m + 2]
            if lo <= f <= mid:
                out[i, m] = (f - lo) / (mid - lo)
            elif mid < f <= hi:
                out[i, m] = (hi - f) / (hi - mid)
    return out


def test_log_mel_matches_a_slow_numpy_reference():
    cfg = LogMelConfig(max_seconds=0.5)
    rng = np.random.default_rng(0)
    x = (0.3 * np.sin(2 * np.pi * 440 * np.arange(8000) / 16000) + 0.05 * rng.normal(size=8000)).astype(np.float32)
    got = LogMel(cfg)(torch.from_numpy(x)).numpy()
    filters = _slow_filters(cfg.n_fft // 2 + 1, cfg.n_mels, cfg.sample_rate, cfg.f_min, cfg.f_max)
    np.testing.assert_allclose(mel_filterbank(cfg.n_fft // 2 + 1, cfg.n_mels, cfg.sample_rate, cfg.f_min,
                                              cfg.f_max).numpy(), filters, atol=1e-6)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(cfg.n_fft) / cfg.n_fft)  # periodic Hann
    frames = [x[i * cfg.hop: i * cfg.hop + cfg.n_fft] for i in range(cfg.frames)]
    power = np.stack([np.abs(np.fft.rfft(f * window)) ** 2 for f in frames], axis=1)
    want = np.log(np.maximum(filters.T @ power, LOG_FLOOR))
    assert got.shape == (cfg.n_mels, cfg.frames) == (40, 24)
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=1e-4)


def test_a_tone_lights_the_mel_band_centred_on_it():
    cfg = LogMelConfig(max_seconds=1.0)
    for hz in (300.0, 1000.0, 3000.0):
        x = np.sin(2 * np.pi * hz * np.arange(16000) / 16000).astype(np.float32)
        band = int(LogMel(cfg)(torch.from_numpy(x)).mean(dim=1).argmax())
        mels = np.linspace(2595 * np.log10(1 + cfg.f_min / 700), 2595 * np.log10(1 + cfg.f_max / 700), cfg.n_mels + 2)
        centres = 700 * (10 ** (mels[1:-1] / 2595) - 1)
        assert band == int(np.abs(centres - hz).argmin()), hz


def test_speech_input_pads_to_a_fixed_length_and_normalises(tmp_path):
    path = tmp_path / "a.wav"
    wavfile.write(path, 16000, (0.5 * np.sin(np.arange(16000) / 5) * 32767).astype(np.int16))
    x, notes = SpeechInput()(path)
    assert x.shape == (40, 299) and notes == []
    # the padding after the one second of sound is silence: the log floor, normalised to -1
    silence = (math.log(LOG_FLOOR) - LOG_CENTRE) / LOG_SCALE
    assert torch.allclose(x[:, -100:], torch.full((40, 100), silence))
    assert float(x[:, :40].mean()) > silence + 0.5


# ---- bad audio and depth files ----------------------------------------------------------------------

def test_wav_reader_adjusts_what_it_can_and_refuses_the_rest(tmp_path):
    t = np.arange(8000) / 8000
    wavfile.write(tmp_path / "8k.wav", 8000, (0.5 * np.sin(2 * np.pi * 200 * t) * 32767).astype(np.int16))
    a = read_wav(tmp_path / "8k.wav")
    assert a.sample_rate == 16000 and abs(a.seconds - 1.0) < 1e-3 and a.notes == ["resampled from 8000 Hz"]
    stereo = np.stack([np.sin(2 * np.pi * 200 * t), np.zeros_like(t)], axis=1).astype(np.float32)
    wavfile.write(tmp_path / "stereo.wav", 16000, stereo)  # float WAV, two channels
    assert read_wav(tmp_path / "stereo.wav").notes == ["mixed to mono"]
    loud = np.clip(3 * np.sin(2 * np.pi * 200 * t), -1, 1)
    wavfile.write(tmp_path / "clipped.wav", 16000, (loud * 32767).astype(np.int16))
    assert "clipped" in read_wav(tmp_path / "clipped.wav").notes
    assert read_wav(tmp_path / "8k.wav", max_seconds=0.5).notes[-1] == "cut at 0.5 s"
    wavfile.write(tmp_path / "silent.wav", 16000, np.zeros(16000, dtype=np.int16))
    wavfile.write(tmp_path / "empty.wav", 16000, np.zeros(0, dtype=np.int16))
    (tmp_path / "text.wav").write_text("not audio")
    Image.new("RGB", (4, 4)).save(tmp_path / "image.wav", format="PNG")
    for name, words in (("silent.wav", "silent"), ("empty.wav", "empty"), ("text.wav", "not a readable WAV"),
                        ("image.wav", "not a readable WAV"), ("missing.wav", "no such")):
        with pytest.raises(AudioReadError, match=words) as e:
            read_wav(tmp_path / name)
        assert name in str(e.value) and "\n" not in str(e.value)


def test_depth_reader_resizes_notes_8_bit_and_refuses_colour(tmp_path):
    depth = np.full((32, 48), 4000, dtype=np.uint16)
    depth[8:16, 8:16] = 1000
    Image.fromarray(depth).save(tmp_path / "d.png")
    x, notes = DepthInput()(tmp_path / "d.png")
    assert x.shape == (1, 64, 64) and notes == ["resized from 48x32"]
    assert float(x[0, 20, 16]) > float(x[0, 50, 50])  # nearer is brighter (disparity)
    Image.fromarray((depth // 20).astype(np.uint8)).save(tmp_path / "l.png")
    assert DepthInput()(tmp_path / "l.png")[1][0].startswith("L mode")
    Image.new("RGB", (64, 64)).save(tmp_path / "rgb.png")
    Image.fromarray(np.zeros((64, 64), dtype=np.uint16)).save(tmp_path / "zero.png")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG broken")
    for name, words in (("rgb.png", "not a single-channel"), ("zero.png", "no valid depth"),
                        ("junk.png", "not a readable image"), ("none.png", "no such")):
        with pytest.raises(ModalityReadError, match=words):
            DepthInput()(tmp_path / name)


# ---- synthetic depth ----------------------------------------------------------------------------------

def test_synthetic_depth_maps_match_the_scene_and_leave_the_image_unchanged():
    from clipforge.data.synthetic import SceneObject, render, render_with_depth

    objs = [SceneObject("ring", "red", "large", "centre"), SceneObject("square", "blue", "small", "top left")]
    plain = render(objs, 64, np.random.default_rng(3))
    img, depth = render_with_depth(objs, 64, np.random.default_rng(3), depth_rng=np.random.default_rng(4))
    assert img.tobytes() == plain.tobytes()
    assert depth.dtype == np.uint16 and depth.shape == (64, 64)
    centre, corner_bg, square = depth[32, 32], depth[63, 63], depth[10, 10]
    ring = depth[32, 32 + 9]  # on the ring's band (radius ~10 px, band ~4 px)
    assert ring < 3000 and square < 3000 and centre > 3400 and corner_bg > 3400  # the ring's hole shows the wall
    assert square < ring  # drawn later, nearer


# ---- the task's loss -----------------------------------------------------------------------------------

def _tiny_bound(embed_dim: int = 16):
    from tests.helpers import micro_config

    from clipforge.bind.model import BoundCLIP, BoundConfig, modality_config

    torch.manual_seed(0)
    cfg = BoundConfig(clip=micro_config().to_dict(), modalities={
        "depth": modality_config("depth", embed_dim, widths=[4, 8], kernel=3)})
    return BoundCLIP(cfg)


def test_bind_loss_is_infonce_against_the_frozen_targets_both_ways(tmp_path):
    from clipforge.bind.data import ModalityBatch
    from clipforge.bind.task import BindTask
    from clipforge.engine.distributed import DistInfo

    model = _tiny_bound()
    n = 6
    targets = torch.nn.functional.normalize(torch.randn(10, 16), dim=-1)
    task = BindTask(model, "depth", [str(tmp_path / f"{i}.png") for i in range(10)], targets, batch_size=n, lr=1e-3,
                    weight_decay=0.0, seed=0, workers=0, info=DistInfo(), device=torch.device("cpu"))
    model.eval()  # fixed BatchNorm statistics: the two passes below see the same function
    idx = torch.tensor([7, 2, 9, 0, 4, 5])
    batch = ModalityBatch(idx, torch.randn(n, 1, 64, 64), [], __import__("collections").Counter())
    emb = task.embed(batch)
    loss = task.loss_from(emb, batch)["loss"]
    # slow loop: -log softmax of the matching pair, modality->target and target->modality, averaged
    m, t = emb["modality"].detach().double(), targets[idx].double()
    s = math.exp(float(model.logit_scales["depth"].detach()))
    total = 0.0
    for i in range(n):
        row = [s * float(m[i] @ t[j]) for j in range(n)]
        col = [s * float(t[i] @ m[j]) for j in range(n)]
        total += -(row[i] - math.log(sum(math.exp(v) for v in row)))
        total += -(col[i] - math.log(sum(math.exp(v) for v in col)))
    assert abs(float(loss) - total / (2 * n)) < 1e-4
    # only the new encoder and its temperature learn
    loss.backward()
    assert all(p.grad is None for p in model.clip.parameters())
    assert model.encoders["depth"].proj.weight.grad is not None and model.logit_scales["depth"].grad is not None


def test_bound_model_saves_loads_and_extends(tmp_path):
    from tests.helpers import micro_config

    from clipforge.bind.model import BoundCLIP
    from clipforge.bind.train import bind_modality
    from clipforge.checkpoints import load
    from clipforge.checkpoints.native import save
    from clipforge.errors import ConfigError
    from clipforge.models.clip import CLIP

    torch.manual_seed(1)
    clip = CLIP(micro_config()).eval()
    bound = bind_modality(clip, "depth", encoder={"widths": [4, 8]})
    save(bound, tmp_path / "b1")
    loaded = load(tmp_path / "b1")
    assert isinstance(loaded, BoundCLIP) and loaded.modalities == ["depth"]
    images, depth = torch.randn(3, 3, 16, 16), torch.randn(3, 1, 64, 64)
    bound.eval()
    assert torch.equal(loaded.encode_image(images), clip.encode_image(images))
    assert torch.allclose(loaded.encode_depth(depth), bound.encode_depth(depth))
    both = bind_modality(loaded, "speech", encoder={"widths": [8, 8]})
    assert both.modalities == ["depth", "speech"]
    assert torch.allclose(both.eval().encode("depth", depth), loaded.encode_depth(depth))
    with pytest.raises(ConfigError, match="already binds depth"):
        bind_modality(both, "depth")
    with pytest.raises(ConfigError, match="no 'speech' encoder"):
        loaded.encode_speech(torch.randn(2, 40, 299))


# ---- the commands end to end ---------------------------------------------------------------------------

def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _tiny_clip(tmp_path: Path) -> Path:
    from clipforge.checkpoints.load import build
    from clipforge.checkpoints.native import save

    torch.manual_seed(0)
    return save(build("tiny-rn-64"), tmp_path / "clip")


def test_bind_train_counts_bad_depth_files_and_eval_reports(tmp_path):
    from clipforge.cli.main import main
    from clipforge.data.synthetic import SynthConfig, write_dataset

    data = write_dataset(tmp_path / "d", SynthConfig(seed=2, n_train=40, n_val=12, n_zeroshot_per_class=1),
                         progress=False, modalities=("depth",))
    rows = _rows(data / "train.csv")
    Image.new("RGB", (64, 64)).save(data / rows[0]["depth"])  # a colour image where a depth map should be
    (data / rows[1]["depth"]).unlink()  # missing
    rows[2]["depth"] = ""  # empty field
    with open(data / "train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    clip = _tiny_clip(tmp_path)
    out = tmp_path / "run"
    assert main(["bind", "train", "--modality", "depth", "--clip", str(clip), "--data", str(data / "train.csv"),
                 "epochs=2", "batch_size=8", "warmup_steps=1", f"out_dir={out}", "encoder={widths: [8, 16]}",
                 "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    # the empty field once, at reading; each bad file each epoch it came up in (a batch of 8 drops the rest)
    assert summary["skipped"]["unreadable row"] == 1
    assert summary["skipped"].get("wrong image mode", 0) + summary["skipped"].get("missing file", 0) >= 1
    # a captioner that read the same CLIP's text embeddings only (CapDec), re-used on depth embeddings
    cap = tmp_path / "capdec"
    assert main(["caption", "train", "--method", "capdec", "--clip", str(clip), "--data", str(data / "train.csv"),
                 f"out_dir={cap}", "epochs=1", "batch_size=8", "prefix_length=2", "lm.width=16", "lm.layers=1",
                 "lm.heads=2", "lm.vocab_size=300", "lm.context_length=20", "mapper_layers=1", "mapper_heads=2",
                 "gap_pairs=16", "tensorboard=false", "--no-progress"]) == 0
    assert main(["bind", "eval", "--model", str(out / "model"), "--data", str(data), "--out",
                 str(tmp_path / "res"), "--captioner", str(cap / "model")]) == 0
    res = json.loads((tmp_path / "res" / "bind_eval.json").read_text())
    assert {"depth/zeroshot_seen", "image/zeroshot_seen"} <= set(res["zero_shot"])
    assert "text-depth" in res["retrieval"] and "image-depth" in res["retrieval"]
    assert {"depth/zeroshot_seen", "image/zeroshot_heldout"} <= set(res["captioner"])
    assert all(isinstance(e["caption"], str) for e in res["captioner"]["depth/zeroshot_seen"]["examples"])
    md = (tmp_path / "res" / "bind_eval.md").read_text()
    assert md.startswith("# What emerges") and "trained on text embeddings only" in md
    assert (tmp_path / "res" / "bind_eval.png").read_bytes()[:4] == b"\x89PNG"


def test_bind_cli_errors_are_one_line(tmp_path, capsys):
    from clipforge.cli.main import main

    clip = _tiny_clip(tmp_path)
    with pytest.raises(SystemExit):
        main(["bind", "train", "--modality", "smell", "--clip", str(clip), "--data", "x.csv"])
    (tmp_path / "t.csv").write_text("image,caption\na.png,a red circle\n")
    assert main(["bind", "train", "--modality", "depth", "--clip", str(clip), "--data", str(tmp_path / "t.csv")]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'smell'" in err and "no depth column" in err
    assert main(["bind", "eval", "--model", str(clip), "--data", str(tmp_path)]) == 2
    assert "not a bound model" in capsys.readouterr().err


@needs_espeak
def test_synth_speech_writes_spoken_captions_and_words(tmp_path):
    from clipforge.data.synthetic import SynthConfig, write_dataset

    data = write_dataset(tmp_path / "d", SynthConfig(seed=3, n_train=6, n_val=2, n_zeroshot_per_class=1),
                         progress=False, modalities=("speech",))
    rows = _rows(data / "train.csv")
    assert set(rows[0]) == {"image", "caption", "phrasings", "speech"}
    a = read_wav(data / rows[0]["speech"])
    assert a.sample_rate == 16000 and 0.5 < a.seconds < 6 and a.notes == []
    words = _rows(data / "speech_words.csv")
    assert {w["word"] for w in words} >= {"red", "star"} and len(words) == 16 * 4
    x, _ = SpeechInput()(data / words[0]["speech"])
    assert x.shape == (40, 299)
    # deterministic: the same seed writes the same audio
    again = write_dataset(tmp_path / "e", SynthConfig(seed=3, n_train=6, n_val=2, n_zeroshot_per_class=1),
                          progress=False, modalities=("speech",))
    assert (again / rows[3]["speech"]).read_bytes() == (data / rows[3]["speech"]).read_bytes()


@pytest.mark.slow
@needs_espeak
def test_speech_bound_to_images_only_is_classified_by_text_above_chance(tmp_path):
    """The point of ImageBind, small: a CLIP trained on scenes, speech bound to its images only; the
    text tower then names the colour a clip speaks far above chance, though no (text, speech) pair
    was ever seen."""
    from tests.helpers import tiny_train_config

    from clipforge.bind.measure import measure, synthetic_layout
    from clipforge.checkpoints import load
    from clipforge.cli.main import main
    from clipforge.data.synthetic import SynthConfig, write_dataset
    from clipforge.training.config import TrainConfig
    from clipforge.training.trainer import train

    data = write_dataset(tmp_path / "d", SynthConfig(seed=5, image_size=32, n_train=1024, n_val=64,
                                                     n_zeroshot_per_class=2), progress=False, modalities=("speech",))
    cfg = tiny_train_config(data, tmp_path / "clip", epochs=16, batch_size=64)
    train(TrainConfig.from_dict(cfg), progress=False)
    assert main(["bind", "train", "--modality", "speech", "--clip", str(tmp_path / "clip" / "model"), "--data",
                 str(data / "train.csv"), "epochs=30", "batch_size=64", "warmup_steps=10", "threads=2",
                 f"out_dir={tmp_path / 'bound'}", "encoder={widths: [32, 64, 64]}", "--no-progress"]) == 0
    res = measure(load(tmp_path / "bound" / "model"), synthetic_layout(data), progress=False)
    image, speech = res["zero_shot"]["image/zeroshot_seen"], res["zero_shot"]["speech/zeroshot_seen"]
    # chance is 12.5%; measured 51% for the CLIP's own images, 50% for the speech (AMD EPYC, 2 threads)
    assert image["colour_acc"] > 3 * image["colour_chance"], image  # the CLIP itself knows colours
    assert speech["colour_acc"] > 2.5 * speech["colour_chance"], speech


def test_binding_leaves_the_clip_exactly_as_it_was(tmp_path):
    """The CLIP's weights and BatchNorm statistics are the same after binding (its image embeddings
    are computed in eval mode, and it stays frozen)."""
    from clipforge.checkpoints import load
    from clipforge.cli.main import main
    from clipforge.data.synthetic import SynthConfig, write_dataset
    from clipforge.evaluation.cache import model_fingerprint

    data = write_dataset(tmp_path / "d", SynthConfig(seed=4, n_train=24, n_val=4, n_zeroshot_per_class=1),
                         progress=False, modalities=("depth",))
    clip = _tiny_clip(tmp_path)  # a ResNet tower: BatchNorm
    assert main(["bind", "train", "--modality", "depth", "--clip", str(clip), "--data", str(data / "train.csv"),
                 "epochs=1", "batch_size=8", f"out_dir={tmp_path / 'b'}", "encoder={widths: [4, 8]}",
                 "--no-progress"]) == 0
    assert model_fingerprint(load(tmp_path / "b" / "model").clip) == model_fingerprint(load(clip))


def test_bind_resume_gives_the_uninterrupted_run(tmp_path):
    from safetensors.torch import load_file

    from clipforge.bind.config import BindTrainConfig
    from clipforge.bind.train import train_bind
    from clipforge.data.synthetic import SynthConfig, write_dataset

    data = write_dataset(tmp_path / "d", SynthConfig(seed=6, n_train=32, n_val=4, n_zeroshot_per_class=1),
                         progress=False, modalities=("depth",))
    base = {"modality": "depth", "clip": str(_tiny_clip(tmp_path)), "data": str(data / "train.csv"), "epochs": 2,
            "batch_size": 8, "warmup_steps": 2, "save_every_minutes": 0, "encoder": {"widths": [4, 8]}}
    train_bind(BindTrainConfig.from_dict({**base, "out_dir": str(tmp_path / "whole")}), progress=False)
    part = {**base, "out_dir": str(tmp_path / "part")}
    train_bind(BindTrainConfig.from_dict({**part, "max_steps": 3}), progress=False)
    train_bind(BindTrainConfig.from_dict(part), resume="latest", progress=False)
    whole = load_file(str(tmp_path / "whole" / "model" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "part" / "model" / "model.safetensors"))
    assert whole.keys() == resumed.keys()
    assert [k for k in whole if not torch.equal(whole[k], resumed[k])] == []


def test_a_bound_models_index_is_searched_by_a_depth_map_from_the_api_and_the_cli(tmp_path, capsys):
    import base64

    from fastapi.testclient import TestClient

    from clipforge.bind.train import bind_modality
    from clipforge.checkpoints import load
    from clipforge.checkpoints.native import save
    from clipforge.cli.main import main
    from clipforge.data.synthetic import SynthConfig, write_dataset
    from clipforge.search.embed import embed_collection
    from clipforge.search.index import build_index
    from clipforge.search.server import create_app

    data = write_dataset(tmp_path / "d", SynthConfig(seed=7, n_train=4, n_val=12, n_zeroshot_per_class=1),
                         progress=False, modalities=("depth",))
    bound = save(bind_modality(load(_tiny_clip(tmp_path)), "depth", encoder={"widths": [4, 8]}), tmp_path / "bound")
    model = load(bound)
    emb = embed_collection(model, str(data / "val.csv"), tmp_path / "emb", model_path=str(bound), progress=False)
    build_index(emb, tmp_path / "idx")
    query = data / _rows(data / "val.csv")[3]["depth"]
    client = TestClient(create_app(tmp_path / "idx"))
    got = client.post("/search", json={"depth": base64.b64encode(query.read_bytes()).decode(), "k": 3})
    assert got.status_code == 200 and len(got.json()["results"]) == 3
    # the same ranking as the embeddings say
    x, _ = model.read("depth", query)
    with torch.no_grad():
        q = model.encode_depth(x[None], normalize=True)[0]
    from clipforge.search.embed import read_embeddings

    vectors = torch.from_numpy(read_embeddings(emb)[0].astype("float32"))
    assert got.json()["results"][0]["score"] == pytest.approx(float((vectors @ q).max()), abs=2e-3)
    refused = client.post("/search", json={"speech": base64.b64encode(b"RIFF....").decode()})
    assert refused.status_code == 400 and "no 'speech' encoder" in refused.json()["error"]
    bad = client.post("/search", json={"depth": base64.b64encode(b"not a png").decode()})
    assert bad.status_code == 400 and bad.json()["error"].startswith("the depth file: not a readable image")
    assert main(["search", str(tmp_path / "idx"), "--depth", str(query), "-k", "2"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_bind_speech_skips_and_counts_bad_wavs_and_adjusts_the_rest(tmp_path):
    from clipforge.bind.config import BindTrainConfig
    from clipforge.bind.train import train_bind

    rng = np.random.default_rng(0)
    rows = []
    for i in range(16):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        t = np.arange(16000) / 16000
        tone = (0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t) * 32767).astype(np.int16)
        wavfile.write(tmp_path / f"{i}.wav", 16000, tone)
        rows.append({"image": f"{i}.png", "caption": "x", "speech": f"{i}.wav"})
    wavfile.write(tmp_path / "0.wav", 8000, (0.3 * np.sin(np.arange(8000) / 3) * 32767).astype(np.int16))
    wavfile.write(tmp_path / "1.wav", 16000, np.zeros(16000, dtype=np.int16))  # silent
    wavfile.write(tmp_path / "2.wav", 16000, np.zeros(0, dtype=np.int16))  # empty
    (tmp_path / "3.wav").write_text("not audio")
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "caption", "speech"])
        w.writeheader()
        w.writerows(rows)
    cfg = BindTrainConfig.from_dict({"modality": "speech", "clip": str(_tiny_clip(tmp_path)),
                                     "data": str(tmp_path / "pairs.csv"), "epochs": 1, "batch_size": 16,
                                     "encoder": {"widths": [8, 8]}, "out_dir": str(tmp_path / "run")})
    result, adjusted = train_bind(cfg, progress=False)
    assert result.state.skipped == {"silent": 1, "empty": 1, "unreadable file": 1}
    assert adjusted == {"resampled": 1}
    assert result.model_path is not None and result.state.step == 1


@pytest.mark.slow
def test_bind_under_torchrun_matches_one_process_in_its_trained_weights(tmp_path):
    """2 gloo ranks, each holding half of every batch, train the encoder as one process whose batch
    is split in the same halves (micro_batch_size): each half is normalised by its own BatchNorm
    statistics either way. The running statistics differ (a rank keeps its own), the weights do not."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    from clipforge.data.synthetic import SynthConfig, write_dataset

    data = write_dataset(tmp_path / "d", SynthConfig(seed=8, n_train=32, n_val=4, n_zeroshot_per_class=1),
                         progress=False, modalities=("depth",))
    clip = _tiny_clip(tmp_path)
    weights = {}
    for world in (1, 2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CLIPFORGE_THREADS": "1"}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world), "--master-port",
               str(29600 + os.getpid() % 1000 + world), "-m", "clipforge.cli.main", "bind", "train", "--modality",
               "depth", "--clip", str(clip), "--data", str(data / "train.csv"), "epochs=1", "batch_size=8",
               "warmup_steps=1", f"out_dir={tmp_path / f'run{world}'}", "encoder={widths: [4, 8]}",
               *(["micro_batch_size=4"] if world == 1 else []), "--no-progress"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        weights[world] = load_file(str(tmp_path / f"run{world}" / "model" / "model.safetensors"))
    trained = [k for k in weights[1] if k.startswith(("encoders.", "logit_scales.")) and "running_" not in k
               and "num_batches" not in k]
    assert len(trained) > 4
    for k in trained:
        torch.testing.assert_close(weights[2][k], weights[1][k], rtol=1e-4, atol=1e-5, msg=k)
