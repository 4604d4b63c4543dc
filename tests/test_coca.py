"""CoCa: open_clip's checkpoints number for number, generation modes, the KV cache, save/load/export."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import clipforge
from clipforge.models.coca import CoCa, CoCaConfig, DecoderConfig
from clipforge.models.config import TextConfig, ViTConfig
from clipforge.models.generation import GenerationConfig
from conftest import PEERS

# open_clip's CoCa as ../shared/peers made it: its decoder projection was never initialised (NaNs),
# so only the embeddings are informative; openclip_coca_init is open_clip's code with it initialised.
SHARED = PEERS / "openclip_coca_tiny"
FIXTURE = PEERS / "openclip_coca_init"


@pytest.fixture(scope="module")
def coca():
    return clipforge.load(FIXTURE)


def test_the_shared_open_clip_fixture_loads_and_embeds_the_same() -> None:
    model = clipforge.load(SHARED)
    inputs, expected = load_file(str(SHARED / "inputs.safetensors")), load_file(str(SHARED / "expected.safetensors"))
    with torch.no_grad():
        out = model(inputs["images"], inputs["text"])
    torch.testing.assert_close(out["image_features"], expected["image_features"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out["text_features"], expected["text_features"], rtol=0, atol=1e-5)
    assert torch.isnan(expected["caption_logits"]).all() and torch.isnan(out["logits"]).all()  # open_clip's bug
    assert torch.equal(model.generate(inputs["images"], GenerationConfig(max_len=11))["ids"], expected["greedy_ids"])


def test_open_clip_coca_matches_number_for_number(coca) -> None:
    assert isinstance(coca, CoCa) and not coca.visual.attn_pool.attn.packed  # 48-wide tower, 64-d space
    inputs, expected = load_file(str(FIXTURE / "inputs.safetensors")), load_file(str(FIXTURE / "expected.safetensors"))
    assert (inputs["text"] == 0).any()  # padded captions: the padding mask is exercised
    with torch.no_grad():
        out = coca(inputs["images"], inputs["text"])
    torch.testing.assert_close(out["image_features"], expected["image_features"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out["text_features"], expected["text_features"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out["logits"], expected["caption_logits"], rtol=0, atol=1e-5)
    torch.testing.assert_close(out["logit_scale"].reshape(1), expected["logit_scale"].reshape(1))
    # Greedy decoding from the start token, 11 steps: exactly open_clip's ids, with and without the cache.
    for cache in (True, False):
        ids = coca.generate(inputs["images"], GenerationConfig(max_len=11), use_cache=cache)["ids"]
        assert torch.equal(ids, expected["greedy_ids"]), cache


def test_cached_and_uncached_decoding_agree_for_every_strategy(coca) -> None:
    images = load_file(str(FIXTURE / "inputs.safetensors"))["images"]
    for cfg in (GenerationConfig(strategy="beam", num_beams=3, max_len=8),
                GenerationConfig(strategy="sample", top_k=20, top_p=0.9, temperature=0.8, max_len=8),
                GenerationConfig(max_len=8, repetition_penalty=1.5, min_len=4)):
        got = [coca.generate(images, cfg, use_cache=c, generator=torch.Generator().manual_seed(0))["ids"]
               for c in (True, False)]
        assert torch.equal(got[0], got[1]), cfg.strategy
    out = coca.generate(images, GenerationConfig(max_len=6, min_len=6))
    assert out["ids"].shape == (3, 7) and (out["ids"][:, 1:] != coca.config.end_id).all()
    torch.testing.assert_close(out["image_features"], coca.encode_image(images, normalize=True))


def test_beam_search_scores_at_least_as_well_as_greedy(coca) -> None:
    images = load_file(str(FIXTURE / "inputs.safetensors"))["images"]

    def logprob(ids: torch.Tensor) -> torch.Tensor:  # summed log p of each row's continuation
        image = coca.visual.forward_tokens(images)
        logits = coca.text_decoder(image["tokens"], coca.text.forward_tokens(ids)["tokens"])[:, :-1]
        return torch.log_softmax(logits, -1).gather(2, ids[:, 1:, None]).squeeze(2).sum(1)

    greedy = coca.generate(images, GenerationConfig(max_len=6, min_len=6))["ids"]
    beam = coca.generate(images, GenerationConfig(strategy="beam", num_beams=4, max_len=6, min_len=6,
                                                  length_penalty=0.0))["ids"]
    with torch.no_grad():
        assert (logprob(beam) >= logprob(greedy) - 1e-5).all()


def test_save_load_and_export_round_trip(coca, tmp_path) -> None:
    import json

    clipforge.save(coca, tmp_path / "native")
    assert json.loads((tmp_path / "native" / "config.json").read_text())["arch"] == "coca"
    again = clipforge.load(tmp_path / "native")
    for k, v in coca.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    from clipforge.checkpoints.openclip_coca import export_openclip_coca

    export_openclip_coca(coca, tmp_path / "oc")
    clipforge.export_openclip(coca, tmp_path / "hub", layout="hub")  # the generic export dispatches on the arch
    assert json.loads((tmp_path / "hub" / "open_clip_config.json").read_text())["model_cfg"]["multimodal_cfg"]
    sd = load_file(str(tmp_path / "oc" / "oc.safetensors"))
    assert set(sd) == set(load_file(str(FIXTURE / "model.safetensors")))  # open_clip's key names
    cfg = json.loads((tmp_path / "oc" / "oc.json").read_text())
    assert cfg["multimodal_cfg"]["vocab_size"] == 1000 and cfg["vision_cfg"]["attentional_pool"] is True
    reloaded = clipforge.load(tmp_path / "oc" / "oc.safetensors")  # open_clip's flat layout, read back
    assert reloaded.config.vision == coca.config.vision and reloaded.config.decoder == coca.config.decoder
    images = load_file(str(FIXTURE / "inputs.safetensors"))["images"]
    torch.testing.assert_close(reloaded.encode_image(images), coca.encode_image(images), rtol=0, atol=0)


def test_coca_configs_are_checked() -> None:
    from clipforge.errors import ConfigError

    with pytest.raises(ConfigError, match="decoder.width=32 must equal embed_dim=64"):
        CoCaConfig(embed_dim=64, decoder=DecoderConfig(width=32, heads=2))
    small = CoCaConfig(embed_dim=32, vision=ViTConfig(image_size=16, patch_size=8, width=32, layers=1, head_width=16),
                       text=TextConfig(context_length=12, vocab_size=50, width=32, heads=2, layers=1),
                       decoder=DecoderConfig(width=32, layers=1, heads=2, context_length=12, vocab_size=50),
                       attn_pooler_queries=5, attn_pooler_heads=2, start_id=48, end_id=49)
    assert CoCaConfig.from_dict(small.to_dict()) == small
    model = CoCa(small)
    out = model(torch.randn(2, 3, 16, 16), torch.tensor([[48, 3, 4, 49, 0, 0], [48, 5, 49, 0, 0, 0]]))
    assert out["logits"].shape == (2, 5, 50) and out["image_features"].shape == (2, 32)


def _small(vocab: int = 40, context: int = 10) -> CoCaConfig:
    return CoCaConfig(embed_dim=16, vision=ViTConfig(image_size=16, patch_size=8, width=16, layers=1, head_width=8),
                      text=TextConfig(context_length=context, vocab_size=vocab, width=16, heads=2, layers=1),
                      decoder=DecoderConfig(width=16, layers=1, heads=2, context_length=context, vocab_size=vocab),
                      attn_pooler_queries=3, attn_pooler_heads=2, start_id=vocab - 2, end_id=vocab - 1)


def test_coca_gradients_are_exact_under_micro_batching() -> None:
    """The task's loss is contrastive_weight * CLIP + caption_weight * caption CE of the model's own
    forward, and micro-batches of 2 give the full batch's gradients (temperature included)."""
    from clipforge.engine.accumulate import forward_backward
    from clipforge.engine.context import StepContext
    from clipforge.losses import clip_loss
    from clipforge.training.coca_task import CoCaStep

    torch.manual_seed(0)
    model = CoCa(_small()).double()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(6, 3, 16, 16, generator=g, dtype=torch.float64)
    tokens = torch.zeros(6, 10, dtype=torch.long)
    for row, n in enumerate((3, 5, 2, 7, 4, 6)):
        tokens[row, 0], tokens[row, n + 1] = 38, 39
        tokens[row, 1 : n + 1] = torch.randint(1, 38, (n,), generator=g)
    out = model(images, tokens)
    reference = clip_loss(out["image_features"], out["text_features"], out["logit_scale"]) + \
        2.0 * model.caption_loss(out["logits"], out["labels"])
    reference.backward()
    expected = {k: p.grad.clone() for k, p in model.named_parameters()}
    for micro in (None, 2):
        model.zero_grad()
        task = CoCaStep(model, clip_loss)  # batches of unequal caption lengths: micro-batches differ in tokens
        ctx = StepContext(task.dist, torch.device("cpu"), "fp32", micro, {}, task)
        got = forward_backward(task, (images, tokens), ctx)
        torch.testing.assert_close(got["loss"], reference.detach(), rtol=1e-10, atol=0)
        for k, p in model.named_parameters():
            torch.testing.assert_close(p.grad, expected[k], rtol=1e-8, atol=1e-10, msg=f"{micro} {k}")


@pytest.mark.slow
def test_train_a_coca_then_caption_from_the_cli(tmp_path, capsys) -> None:
    import json

    from clipforge.cli.main import main
    from helpers import tiny_synth, tiny_train_config

    data = tiny_synth(tmp_path / "data", n_train=64, n_val=16)
    cfg = tiny_train_config(data, tmp_path / "run", epochs=6, micro_batch_size=8)
    cfg["model"] = {"name": "coca-tiny", "tokenizer": "train", "vocab_size": 300, "context_length": 24,
                    "overrides": {"vision": {"image_size": 32, "patch_size": 8, "layers": 1},
                                  "text": {"layers": 1}, "decoder": {"layers": 1}}}
    cfg["optim"] = {"lr": 3e-3, "warmup_steps": 2}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    assert main(["train", "--config", str(tmp_path / "c.json"), "--no-progress"]) == 0
    logs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "caption" in r]
    assert steps and steps[-1]["caption"] < steps[0]["caption"] - 0.5  # it learns to caption
    assert "contrastive" in steps[0]
    model = clipforge.load(tmp_path / "run" / "model")
    assert isinstance(model, CoCa) and model.config.decoder.vocab_size == model.tokenizer.vocab_size
    images = sorted((data / "images" / "val").glob("*.png"))[:3]
    (tmp_path / "broken.png").write_bytes(b"nope")
    capsys.readouterr()
    assert main(["caption", "--model", str(tmp_path / "run" / "model"), *map(str, images),
                 str(tmp_path / "broken.png"), "--json", str(tmp_path / "caps.json"), "--max-len", "12"]) == 0
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    assert len(lines) == 3 and all(": " in line and len(line.split(": ", 1)[1]) > 0 for line in lines)
    assert "broken.png" in out.err
    written = json.loads((tmp_path / "caps.json").read_text())
    assert [w.get("skipped") is not None for w in written] == [False, False, False, True]
    # eval captioning: COCO metrics against the references, CLIP-score from a separate judge.
    pytest.importorskip("pycocoevalcap")
    clipforge.save(clipforge.build("tiny-vit-32"), tmp_path / "judge")
    args = ["eval", "captioning", "--model", str(tmp_path / "run" / "model"), "--dataset", str(data / "val.csv"),
            "--out", str(tmp_path / "res"), "--strategy", "greedy", "--max-len", "12"]
    assert main([*args, "--judge", str(tmp_path / "run" / "model")]) == 2  # never its own judge
    assert "judge" in capsys.readouterr().err
    assert main([*args, "--judge", str(tmp_path / "judge"), "--limit", "8"]) == 0
    (result,) = (tmp_path / "res").glob("captioning__*.json")
    metrics = json.loads(result.read_text())["metrics"]
    assert metrics["n_images"] == 8 and 0 <= metrics["bleu_4"] <= 1 and metrics["cider_d"] >= 0
    assert 0 <= metrics["clip_score"] <= 2.5 and "ref_clip_score" in metrics
    assert metrics["seen/n_images"] > 0 and 0 <= metrics["heldout/colour_acc"] <= 1  # synthetic scenes: attributes


@pytest.mark.parametrize("name", ["coca_ViT-B-32", "coca_ViT-L-14"])
def test_named_coca_configs_are_open_clips(name) -> None:
    import json

    from clipforge.checkpoints.openclip_coca import config_from_openclip_coca, config_to_openclip_coca
    from clipforge.models import get_config
    from conftest import FIXTURES

    theirs = json.loads((FIXTURES / "open_clip_configs" / f"{name}.json").read_text())
    ours = get_config(name)
    assert config_from_openclip_coca(theirs) == ours
    assert config_from_openclip_coca(config_to_openclip_coca(ours)) == ours
