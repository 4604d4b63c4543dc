"""Training word2vec on a text file (or a CSV column of captions) as a task of the engine, saving and querying it."""

from __future__ import annotations

import csv
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from clipforge.engine.distributed import DistInfo
from clipforge.engine.loop import EngineConfig, fit
from clipforge.engine.task import Task
from clipforge.errors import ClipforgeError
from clipforge.word2vec.model import SkipGram
from clipforge.word2vec.vocab import Vocab, tokenize


@dataclass
class Word2VecConfig:
    """Attributes:
    dim: vector width. window: largest context distance (each centre draws 1..window, as the
    reference code). negatives: noise words per pair. min_count: rarer words are dropped.
    subsample: the t of frequent-word subsampling (0: off; None: 1e-3 for corpora of at least
    100k tokens, else off -- in a small corpus every word is "frequent" and subsampling starves
    training). epochs, batch_size, lr: SparseAdam.
    seed: everything random.
    """

    dim: int = 64
    window: int = 4
    negatives: int = 5
    min_count: int = 2
    subsample: float | None = None
    epochs: int = 5
    batch_size: int = 1024
    lr: float = 0.01
    seed: int = 0


def read_sentences(path: str | Path, column: str | None = None) -> list[list[str]]:
    """Lines of a text file, or one CSV column (``column``), tokenised and lower-cased."""
    path = Path(path)
    if not path.is_file():
        raise ClipforgeError(f"{path}: no such file")
    if path.suffix.lower() in (".csv", ".tsv") or column:
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            col = column or "caption"
            if col not in (reader.fieldnames or []):
                raise ClipforgeError(f"{path}: no column {col!r}; the header has {reader.fieldnames}")
            return [tokenize(row[col] or "") for row in reader]
    with open(path, encoding="utf-8", errors="replace") as f:
        return [t for line in f if (t := tokenize(line))]


def _pairs(sentences: list[list[int]], cfg: Word2VecConfig, keep: torch.Tensor | None,
           g: torch.Generator) -> torch.Tensor:
    """(centre, context) id pairs of one epoch, after subsampling, with dynamic windows."""
    out = []
    for sent in sentences:
        ids = torch.tensor(sent, dtype=torch.long)
        if keep is not None:
            ids = ids[torch.rand(len(ids), generator=g, dtype=torch.float64) < keep[ids]]
        n = len(ids)
        if n < 2:
            continue
        spans = torch.randint(1, cfg.window + 1, (n,), generator=g)
        for i in range(n):
            lo, hi = max(0, i - int(spans[i])), min(n, i + int(spans[i]) + 1)
            for j in range(lo, hi):
                if j != i:
                    out.append((int(ids[i]), int(ids[j])))
    return torch.tensor(out, dtype=torch.long).reshape(-1, 2)


class Word2VecTask(Task):
    """Skip-gram with negative sampling as a task of the engine. Epoch e's pairs, their order and
    their noise words are drawn from a generator seeded by (seed, e), so resuming mid-epoch is exact."""

    def __init__(self, ids: list[list[int]], vocab: Vocab, cfg: Word2VecConfig, keep: torch.Tensor | None) -> None:
        self.ids, self.vocab, self.cfg, self.keep = ids, vocab, cfg, keep
        self.noise = vocab.noise_distribution()
        self.model = SkipGram(len(vocab), cfg.dim)
        self.optimizer = torch.optim.SparseAdam(list(self.model.parameters()), lr=cfg.lr)
        self._pairs_per_epoch = len(_pairs(ids, cfg, keep, torch.Generator().manual_seed(cfg.seed)))

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"main": self.optimizer}

    def steps_per_epoch(self) -> int:
        # Subsampling and dynamic windows vary the count a little between epochs; epoch 0's sets the schedule.
        return max(1, (self._pairs_per_epoch + self.cfg.batch_size - 1) // self.cfg.batch_size)

    def batches(self, epoch: int, start: int):
        cfg = self.cfg
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        pairs = _pairs(self.ids, cfg, self.keep, g)
        pairs = pairs[torch.randperm(len(pairs), generator=g)]
        for i, batch in enumerate(pairs.split(cfg.batch_size)):
            neg = torch.multinomial(self.noise, batch.shape[0] * cfg.negatives, replacement=True, generator=g)
            if i >= start:
                yield batch, neg.view(-1, cfg.negatives)

    def batch_len(self, batch) -> int:
        return batch[0].shape[0]

    def training_step(self, batch, ctx) -> dict[str, torch.Tensor]:
        pairs, neg = batch
        return {"loss": self.model(pairs[:, 0], pairs[:, 1], neg)}


def train_word2vec(sentences: list[list[str]], cfg: Word2VecConfig | None = None, progress: bool = True,
                   out_dir: str | Path | None = None, resume: str | None = None) -> tuple[SkipGram, Vocab, list[float]]:
    """Returns (model, vocabulary, mean loss per epoch). ``out_dir`` keeps the run (checkpoints, logs;
    default: a temporary folder), ``resume`` continues one (``"latest"`` or a checkpoint folder)."""
    cfg = cfg or Word2VecConfig()
    vocab = Vocab.build(sentences, cfg.min_count)
    if len(vocab) < 2:
        raise ClipforgeError(f"the corpus has {len(vocab)} word(s) seen at least {cfg.min_count} times; need 2")
    torch.manual_seed(cfg.seed)
    ids = [[vocab.index[w] for w in s if w in vocab.index] for s in sentences]
    t = cfg.subsample
    if t is None:
        t = 1e-3 if sum(vocab.counts) >= 100_000 else 0.0
    cfg = Word2VecConfig(**{**asdict(cfg), "subsample": t})
    task = Word2VecTask(ids, vocab, cfg, vocab.keep_probability(t) if t else None)
    with tempfile.TemporaryDirectory(prefix="clipforge-word2vec-") as tmp:
        run = Path(out_dir or tmp)
        engine = EngineConfig(out_dir=str(run), epochs=cfg.epochs, schedule="constant", log_every_steps=1,
                              eval_every_epochs=0, tensorboard=False, label="word2vec")
        result = fit(task, engine, DistInfo(), torch.device("cpu"), resume=resume, progress=progress)
    per_epoch: dict[int, list[float]] = {}
    for rec in result.state.history:
        per_epoch.setdefault(rec["epoch"], []).append(rec["loss"])
    task.model.config = cfg  # the settings actually used (subsample resolved)
    return task.model, vocab, [sum(v) / len(v) for _, v in sorted(per_epoch.items())]


def save_word2vec(model: SkipGram, vocab: Vocab, cfg: Word2VecConfig, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({"input": model.inp.weight.detach().contiguous(), "output": model.out.weight.detach().contiguous()},
              str(out / "word2vec.safetensors"))
    vocab.save(out / "vocab.json")
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    return out


def load_word2vec(folder: str | Path) -> tuple[torch.Tensor, Vocab]:
    folder = Path(folder)
    if not (folder / "word2vec.safetensors").is_file():
        raise ClipforgeError(f"{folder}: not a word2vec folder (no word2vec.safetensors)")
    return load_file(str(folder / "word2vec.safetensors"))["input"], Vocab.load(folder / "vocab.json")


def nearest(vectors: torch.Tensor, vocab: Vocab, word: str, k: int = 8) -> list[tuple[str, float]]:
    """The k words with the most similar input vectors (cosine), excluding the word itself."""
    if word.lower() not in vocab.index:
        raise ClipforgeError(f"{word!r} is not in the vocabulary ({len(vocab)} words)")
    v = F.normalize(vectors, dim=-1)
    i = vocab.index[word.lower()]
    sims = v @ v[i]
    sims[i] = -2
    top = sims.topk(min(k, len(vocab) - 1))
    return [(vocab.words[j], float(s)) for s, j in zip(top.values, top.indices)]
