"""Prefix captioners (ClipCap with a tuned or frozen LM, CapDec, DeCap): train, save, load, caption."""

from __future__ import annotations

import json

import pytest
import torch

import clipforge
from clipforge.captioning.lm import LMConfig
from clipforge.captioning.prefix import PrefixCaptioner, PrefixConfig, capdec_noise, modality_gap
from clipforge.cli.main import main
from clipforge.errors import ConfigError
from clipforge.models.generation import GenerationConfig
from helpers import tiny_synth


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cap")
    data = tiny_synth(root / "data", n_train=64, n_val=8)
    torch.manual_seed(0)  # the same CLIP whatever ran before (the iterative decoder's choices depend on it)
    clip = clipforge.build("tiny-vit-32")
    clipforge.save(clip, root / "clip")
    return root, data


def _train(root, data, method: str, *extra: str, name: str = "") -> tuple:
    out = root / (name or method)
    args = ["caption", "train", "--method", method, "--clip", str(root / "clip"), "--data", str(data / "train.csv"),
            f"out_dir={out}", "epochs=8", "batch_size=16", "lr=3e-3", "warmup_steps=2", "log_every_steps=1",
            "tensorboard=false", "prefix_length=4", "lm.width=32", "lm.layers=1", "lm.heads=2", "lm.vocab_size=300",
            "lm.context_length=20", "lm.pretrain_epochs=4", "mapper_layers=1", "mapper_heads=2", "gap_pairs=32",
            *extra, "--no-progress"]
    assert main(args) == 0
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return out, [r["loss"] for r in logs if "loss" in r]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["clipcap", "clipcap-frozen", "capdec", "decap", "iterative"])
def test_each_method_trains_saves_loads_and_captions(setup, method, capsys) -> None:
    root, data = setup
    out, losses = _train(root, data, method, *(["lm.pretrain_epochs=40"] if method == "clipcap-frozen" else []))
    if method == "clipcap-frozen":  # the language model learns the captions first, then stays as it is
        lm_logs = [json.loads(line) for line in (out / "lm" / "metrics.jsonl").read_text().splitlines()]
        lm_losses = [r["loss"] for r in lm_logs if "loss" in r]
        assert lm_losses[-1] < lm_losses[0] - 1.0 and losses[-1] <= losses[0]
        from safetensors.torch import load_file

        ckpt = max((out / "lm" / "checkpoints").glob("step_*"))  # the last checkpoint of the pretraining
        pretrained = load_file(str(ckpt / "model.safetensors"))
        final = clipforge.load(out / "model").lm.state_dict()
        assert all(torch.equal(final[k], v) for k, v in pretrained.items())
    else:
        assert losses[-1] < losses[0] - 0.5, losses  # it learns the captions
    model = clipforge.load(out / "model")
    assert model.clip is not None  # loaded with the CLIP it reads
    if method == "iterative":
        from clipforge.captioning.iterative import IterativeCaptioner

        assert isinstance(model, IterativeCaptioner)
    else:
        assert isinstance(model, PrefixCaptioner) and model.config.method == method
    if method == "capdec":  # the noise follows the measured modality gap, and says so
        assert model.config.noise_std > 0 and "image-text distance" in model.config.noise_choice
    if method == "decap":  # the memory: one embedding per distinct training caption, unit length
        import csv

        rows = list(csv.DictReader((data / "train.csv").read_text().splitlines()))
        assert model.memory.shape == (len({r["caption"] for r in rows}), 128)
        torch.testing.assert_close(model.memory.norm(dim=-1), torch.ones(len(model.memory)))
    if method in ("clipcap", "iterative"):  # scored by a judge that is not its CLIP
        from clipforge.captioning.evaluate import evaluate_captioner

        pytest.importorskip("pycocoevalcap")
        judge = clipforge.build("tiny-vit-32")
        out_eval = evaluate_captioner(model, str(data / "val.csv"), judge, GenerationConfig(max_len=10), limit=3,
                                      attribute_images=4)
        assert out_eval["metrics"]["n_images"] == 3 and "clip_score" in out_eval["metrics"]
        with pytest.raises(ConfigError, match="judge"):
            evaluate_captioner(model, str(data / "val.csv"), model, limit=2)
        with pytest.raises(ConfigError, match="the CLIP it reads"):  # nor the CLIP that guided it
            evaluate_captioner(model, str(data / "val.csv"), clipforge.load(root / "clip"), limit=2)
    images = sorted((data / "images" / "val").glob("*.png"))[:2]
    capsys.readouterr()
    assert main(["caption", "--model", str(out / "model"), *map(str, images), "--strategy", "greedy"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.split(": ", 1)[1] for line in lines)
    magic = main(["caption", "--model", str(out / "model"), *map(str, images), "--search", "magic"])
    if method == "iterative":  # MAGIC's token-level guidance on the same captioner
        assert magic == 0 and len(capsys.readouterr().out.strip().splitlines()) == 2
    else:
        assert magic != 0 and "--search applies to iterative captioners" in capsys.readouterr().err


def test_prefix_generation_is_cache_exact_and_its_config_round_trips() -> None:
    from clipforge.captioning.train import PrefixTask  # noqa: F401 - importable

    torch.manual_seed(0)
    cfg = PrefixConfig(method="clipcap-frozen", clip_dim=16, prefix_length=3, mapper_layers=1, mapper_heads=2,
                       lm=LMConfig(vocab_size=30, context_length=16, width=16, layers=1, heads=2),
                       start_id=28, end_id=29)
    model = PrefixCaptioner(cfg)
    emb = torch.randn(4, 16)
    for gen in (GenerationConfig(max_len=8), GenerationConfig(strategy="beam", num_beams=3, max_len=8),
                GenerationConfig(strategy="sample", top_p=0.8, max_len=8)):
        a = model.generate_from_embeddings(emb, gen, use_cache=True, generator=torch.Generator().manual_seed(1))
        b = model.generate_from_embeddings(emb, gen, use_cache=False, generator=torch.Generator().manual_seed(1))
        assert torch.equal(a, b) and (a[:, 0] == 28).all()
    tokens = torch.tensor([[28, 3, 4, 29, 0], [28, 5, 29, 0, 0]])
    out = model(emb[:2], tokens)
    assert out["logits"].shape == (2, 4, 30)
    assert PrefixConfig.from_dict(cfg.to_dict()) == cfg


def test_capdec_noise_covers_the_measured_gap() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(200, 64, generator=g), dim=-1)
    texts = torch.nn.functional.normalize(images + 0.5 * torch.randn(200, 64, generator=g), dim=-1)
    gap = modality_gap(images, texts)
    std, why = capdec_noise(gap)
    noisy = texts + std * torch.randn(200, 64, generator=g)
    moved = (noisy - texts).norm(dim=-1).mean()
    assert abs(float(moved) - gap["mean_distance"]) < 0.05 * gap["mean_distance"] and "std" in why


def test_a_captioner_refuses_another_clip(setup) -> None:
    root, _ = setup
    cfg = PrefixConfig(clip_dim=64, lm=LMConfig(vocab_size=30, context_length=16, width=16, layers=1, heads=2))
    with pytest.raises(ConfigError, match="embeds in 128 dimensions, the captioner reads 64"):
        PrefixCaptioner(cfg).attach_clip(clipforge.load(root / "clip"))


def test_the_iterative_decoder_follows_its_clip() -> None:
    """With CLIP's weight high, the chosen caption is the one the (fake) CLIP matches to the image."""
    from types import SimpleNamespace

    from clipforge.captioning.iterative import IterativeCaptioner, IterativeConfig

    class FakeClip(torch.nn.Module):  # texts containing token 5 point where the image does
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.config = SimpleNamespace(embed_dim=2)
            self.preprocess = None
            self.tokenizer = lambda texts: torch.tensor([[1 if "5" in t.split() else 0] for t in texts])

        def encode_image(self, images):
            return torch.tensor([[1.0, 0.0]]).expand(len(images), 2)

        def encode_text(self, tokens):
            return torch.stack([torch.tensor([1.0, 0.0]) if int(t) else torch.tensor([0.0, 1.0]) for t in tokens[:, 0]])

    torch.manual_seed(0)
    cfg = IterativeConfig(lm=LMConfig(vocab_size=12, context_length=8, width=16, layers=1, heads=2), candidates=10,
                          beams=3, clip_weight=50.0, start_id=10, end_id=11, clip_dim=2)
    model = IterativeCaptioner(cfg)
    model.tokenizer = SimpleNamespace(decode=lambda ids: " ".join(map(str, ids)))
    model.attach_clip(FakeClip())
    ids = model.generate(torch.zeros(2, 3, 4, 4), GenerationConfig(max_len=5))["ids"]
    assert all(5 in row.tolist() for row in ids) and (ids[:, 0] == 10).all()


def test_prefix_micro_batches_give_the_full_batch_gradients() -> None:
    """The loss is a mean over caption tokens: micro-batches holding different numbers of tokens are
    weighted by their tokens, so accumulation equals the whole batch (fp64)."""
    from clipforge.captioning.config import CaptionTrainConfig
    from clipforge.captioning.train import PrefixTask
    from clipforge.engine.accumulate import forward_backward
    from clipforge.engine.context import StepContext
    from clipforge.engine.distributed import DistInfo

    torch.manual_seed(0)
    cfg = PrefixConfig(clip_dim=16, prefix_length=2, lm=LMConfig(vocab_size=30, context_length=10, width=16,
                                                                 layers=1, heads=2), start_id=28, end_id=29)
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(6, 16, generator=g, dtype=torch.float64)
    tokens = torch.zeros(6, 8, dtype=torch.long)
    for i, n in enumerate([6, 1, 4, 2, 5, 3]):  # captions of different lengths
        tokens[i, : n + 2] = torch.tensor([28, *torch.randint(1, 28, (n,), generator=g).tolist(), 29])
    grads = []
    for micro in (None, 2, 4):
        torch.manual_seed(1)
        model = PrefixCaptioner(cfg).double()
        task = PrefixTask(model, emb, tokens, cfg.end_id, CaptionTrainConfig(batch_size=6), DistInfo(),
                          torch.device("cpu"), list(model.parameters()))
        ctx = StepContext(DistInfo(), torch.device("cpu"), "fp32", micro, task.optimizers(), task)
        loss = forward_backward(task, (emb, tokens), ctx)["loss"]
        grads.append((float(loss), [p.grad.clone() for p in model.parameters()]))
    for loss, g_ in grads[1:]:
        assert abs(loss - grads[0][0]) < 1e-10
        for a, b in zip(g_, grads[0][1]):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def _tiny_gpt2(folder, captions: list[str]) -> None:
    """A randomly initialised GPT-2 of a few thousand weights, with a byte-level BPE learned on
    ``captions``: the layout of a Hugging Face GPT-2 folder."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(captions, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                          show_progress=False))
    eos = tok.token_to_id("<|endoftext|>")
    config = transformers.GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=40, n_embd=32, n_layer=2,
                                     n_head=2, bos_token_id=eos, eos_token_id=eos)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(str(folder), safe_serialization=True)
    tok.save(str(folder / "tokenizer.json"))


@pytest.mark.slow
def test_a_hugging_face_gpt2_folder_is_the_language_model(setup, capsys) -> None:
    import csv

    root, data = setup
    captions = [r["caption"] for r in csv.DictReader((data / "train.csv").read_text().splitlines())]
    gpt2 = root / "gpt2"
    _tiny_gpt2(gpt2, captions)
    from safetensors.torch import load_file

    original = load_file(str(gpt2 / "model.safetensors"))
    for method in ("clipcap", "clipcap-frozen"):
        out, losses = _train(root, data, method, f"lm.hf={gpt2}", "micro_batch_size=5", name=f"hf-{method}")
        # Through a frozen *random* GPT-2 only the mapper learns, and little: the loss falls, not far.
        assert losses[-1] < losses[0] - (0.5 if method == "clipcap" else 0.01), losses
        model = clipforge.load(out / "model")
        from clipforge.captioning.hf_lm import HFCausalLM

        assert isinstance(model.lm, HFCausalLM) and model.tokenizer.kind == "causal"
        lm = {k.removeprefix("model."): v for k, v in model.lm.state_dict().items()}
        changed = any(not torch.equal(lm[k], v) for k, v in original.items() if k in lm)
        assert changed == (method == "clipcap")  # tuned, or frozen as the folder has it
        emb = torch.nn.functional.normalize(torch.randn(3, 128), dim=-1)
        for gen in (GenerationConfig(max_len=8), GenerationConfig(strategy="beam", num_beams=3, max_len=8)):
            a = model.generate_from_embeddings(emb, gen, use_cache=True)  # Hugging Face's cache, reordered by beams
            b = model.generate_from_embeddings(emb, gen, use_cache=False)
            assert torch.equal(a, b)
    images = sorted((data / "images" / "val").glob("*.png"))[:2]
    capsys.readouterr()
    assert main(["caption", "--model", str(out / "model"), *map(str, images)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.split(": ", 1)[1] for line in lines)


def test_a_hugging_face_folder_without_safetensors_is_refused(tmp_path) -> None:
    from clipforge.captioning.hf_lm import HFCausalLM

    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(ConfigError, match="does not unpickle"):
        HFCausalLM.from_folder(tmp_path, 20)


class _BagOfTokensClip(torch.nn.Module):
    """A stand-in CLIP: a text's embedding is its token counts, an image's is given."""

    def __init__(self, image_features: torch.Tensor, vocab: int) -> None:
        from types import SimpleNamespace

        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.feats, self.vocab = image_features, vocab
        self.config = SimpleNamespace(embed_dim=vocab)
        self.preprocess = None

    def tokenizer(self, texts):
        out = torch.full((len(texts), self.vocab), 0.01)
        for row, t in zip(out, texts):
            for tok in t.split():
                row[int(tok)] += 1
        return out

    def encode_image(self, images):
        return self.feats[: len(images)]

    def encode_text(self, tokens):
        return tokens


def test_magic_search_matches_a_slow_loop_over_its_equation() -> None:
    """MAGIC (Su et al. 2022, eq. 3), batched, against a per-image, per-candidate loop."""
    from types import SimpleNamespace

    from clipforge.captioning.iterative import IterativeCaptioner, IterativeConfig

    torch.manual_seed(0)
    vocab, k, alpha, beta = 14, 5, 0.3, 2.0
    cfg = IterativeConfig(lm=LMConfig(vocab_size=vocab, context_length=10, width=16, layers=1, heads=2),
                          candidates=k, start_id=12, end_id=13, clip_dim=vocab, search="magic", magic_alpha=alpha,
                          magic_beta=beta)
    model = IterativeCaptioner(cfg)
    model.tokenizer = SimpleNamespace(decode=lambda ids: " ".join(map(str, ids)))
    feats = torch.nn.functional.normalize(torch.rand(3, vocab), dim=-1)
    model.attach_clip(_BagOfTokensClip(feats, vocab))
    got = model.generate(torch.zeros(3, 3, 4, 4), GenerationConfig(max_len=6, min_len=2))["ids"]

    def clip_sim(image, ids):
        text = torch.full((vocab,), 0.01)
        for i in ids:
            if i not in (0, 13):  # padding and end are not words (the tokenizer drops a start token)
                text[i] += 1
        return float(torch.nn.functional.normalize(text, dim=0) @ image)

    torch.set_grad_enabled(False)
    for image, row in zip(feats, got.tolist()):
        ids = [12]
        for t in range(6):
            logits, hidden = model.lm.forward_hidden(model.lm.embed(torch.tensor([ids])))
            p = torch.softmax(logits[0, -1], dim=-1)
            if t < 2:
                p[13] = 0
            best, best_score = None, -float("inf")
            cands = p.topk(k).indices.tolist()
            guide = torch.softmax(torch.tensor([100 * clip_sim(image, ids[1:] + [v]) for v in cands]), dim=0)
            for j, v in enumerate(cands):
                _, h = model.lm.forward_hidden(model.lm.embed(torch.tensor([ids + [v]])))
                h = torch.nn.functional.normalize(h[0], dim=-1)
                penalty = max(float(h[-1] @ h[i]) for i in range(len(ids)))
                score = (1 - alpha) * float(p[v]) - alpha * penalty + beta * float(guide[j])
                if score > best_score:
                    best, best_score = v, score
            ids.append(best)
            if best == 13:
                break
        if ids[-1] != 13:  # out of length: the caption is ended for it
            ids.append(13)
        assert row[: len(ids)] == ids and all(x == 0 for x in row[len(ids):])
    torch.set_grad_enabled(True)
