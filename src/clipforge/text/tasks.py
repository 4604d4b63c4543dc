"""Text-embedding evaluation tasks, each a CSV whose header says its kind (as MTEB's task families):

* ``query,passage``: retrieval. Rows are relevant pairs; the corpus is every distinct passage (rows
  with an empty query only add passages). recall@1/10, MRR@10, nDCG@10.
* ``sentence1,sentence2,score``: semantic similarity. Spearman of the cosine against the score.
* ``sentence1,sentence2,label``: pair classification (deduplication: 1 = duplicate). Average
  precision; precision, recall, F1 and accuracy at the best-F1 cosine threshold.
* ``text,label,split``: classification. Logistic regression fit on ``train`` rows, accuracy on ``test``.
* ``text,label``: clustering. k-means with k = the number of labels; v-measure.

An encoder is any ``encode(texts, role) -> [N, D] tensor``; ``role`` is ``query``/``passage`` for
retrieval and the task kind otherwise, so an instructor-style model prepends its instruction for it.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clipforge.errors import DataError
from clipforge.evaluation.ranking import ranking_metrics

Encode = Callable[[list[str], str], torch.Tensor]
KINDS = {("query", "passage"): "retrieval", ("sentence1", "sentence2", "score"): "sts",
         ("sentence1", "sentence2", "label"): "pairs", ("text", "label", "split"): "classification",
         ("text", "label"): "clustering"}


@dataclass
class TextTask:
    name: str
    kind: str
    rows: list[dict[str, str]]

    def run(self, encode: Encode) -> dict[str, float]:
        return RUNNERS[self.kind](self.rows, encode)


def load_task(path: str | Path) -> TextTask:
    """A task from a CSV; its kind from its header (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such task file")
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.DictReader(f)
        header = tuple(c.strip() for c in reader.fieldnames or ())
        kind = KINDS.get(header)
        if kind is None:
            accepted = "; ".join(",".join(h) for h in KINDS)
            raise DataError(f"{path}: header {','.join(header) or '(empty)'} is not a task's; "
                            f"expected one of: {accepted}")
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    if not rows:
        raise DataError(f"{path}: no rows")
    return TextTask(path.stem, kind, rows)


def load_tasks(sources: list[str | Path]) -> list[TextTask]:
    """Task files, and every ``*.csv`` of the folders given."""
    files: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            found = sorted(source.glob("*.csv"))
            if not found:
                raise DataError(f"{source}: no task CSV files in this folder")
            files += found
        else:
            files.append(source)
    return [load_task(f) for f in files]


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)


def retrieval(rows: list[dict[str, str]], encode: Encode) -> dict[str, float]:
    passages = list(dict.fromkeys(r["passage"] for r in rows if r["passage"]))
    index = {p: i for i, p in enumerate(passages)}
    relevant: dict[str, set[int]] = {}
    for r in rows:
        if r["query"] and r["passage"]:
            relevant.setdefault(r["query"], set()).add(index[r["passage"]])
    queries = list(relevant)
    scores = _unit(encode(queries, "query")) @ _unit(encode(passages, "passage")).T
    return ranking_metrics(scores, [relevant[q] for q in queries])


def _pair_scores(rows: list[dict[str, str]], encode: Encode, role: str) -> np.ndarray:
    a = _unit(encode([r["sentence1"] for r in rows], role))
    b = _unit(encode([r["sentence2"] for r in rows], role))
    return (a * b).sum(-1).numpy()


def sts(rows: list[dict[str, str]], encode: Encode) -> dict[str, float]:
    from scipy.stats import spearmanr

    gold = np.array([float(r["score"]) for r in rows])
    return {"spearman": float(spearmanr(_pair_scores(rows, encode, "sts"), gold).statistic)}


def best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Precision, recall, F1 and accuracy of ``score >= t`` at the t with the best F1 (over every
    observed score), as MTEB's pair classification reports them."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order].astype(float)
    tp = np.cumsum(y)
    predicted = np.arange(1, len(y) + 1)
    precision, recall = tp / predicted, tp / max(1.0, y.sum())
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    last = np.r_[s[1:] != s[:-1], True]  # a threshold includes every tie
    i = int(np.argmax(np.where(last, f1, -1)))
    accuracy = (tp[i] + (len(y) - predicted[i] - (y.sum() - tp[i]))) / len(y)
    return {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
            "accuracy": float(accuracy), "threshold": float(s[i])}


def pairs(rows: list[dict[str, str]], encode: Encode) -> dict[str, float]:
    from sklearn.metrics import average_precision_score

    scores = _pair_scores(rows, encode, "pairs")
    labels = np.array([int(float(r["label"])) for r in rows])
    return {"ap": float(average_precision_score(labels, scores)), **best_f1_threshold(scores, labels)}


def classification(rows: list[dict[str, str]], encode: Encode) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression

    train = [r for r in rows if r["split"] == "train"]
    test = [r for r in rows if r["split"] == "test"]
    if not train or not test:
        raise DataError("a classification task needs rows with split=train and split=test")
    x_train = _unit(encode([r["text"] for r in train], "classification")).numpy()
    x_test = _unit(encode([r["text"] for r in test], "classification")).numpy()
    clf = LogisticRegression(max_iter=1000).fit(x_train, [r["label"] for r in train])
    return {"accuracy": float((clf.predict(x_test) == np.array([r["label"] for r in test])).mean())}


def clustering(rows: list[dict[str, str]], encode: Encode) -> dict[str, float]:
    from sklearn.cluster import KMeans
    from sklearn.metrics import v_measure_score

    labels = [r["label"] for r in rows]
    x = _unit(encode([r["text"] for r in rows], "clustering")).numpy()
    found = KMeans(n_clusters=len(set(labels)), n_init=10, random_state=0).fit_predict(x)
    return {"v_measure": float(v_measure_score(labels, found))}


RUNNERS: dict[str, Callable[[list[dict[str, str]], Encode], dict[str, float]]] = {
    "retrieval": retrieval, "sts": sts, "pairs": pairs, "classification": classification, "clustering": clustering}
HEADLINE = {"retrieval": "ndcg@10", "sts": "spearman", "pairs": "ap", "classification": "accuracy",
            "clustering": "v_measure"}


def evaluate_text(encode: Encode, tasks: list[TextTask]) -> dict[str, dict[str, float]]:
    """Every task's metrics, by task name."""
    return {t.name: {"kind": t.kind, **t.run(encode)} for t in tasks}  # type: ignore[dict-item]


def model_encoder(model, batch_size: int = 64) -> Encode:
    """A :class:`~clipforge.models.sentence_encoder.SentenceEncoder` as an ``Encode``: a role's
    instruction is used when the model has one for it."""
    def encode(texts: list[str], role: str) -> torch.Tensor:
        task = role if role in model.config.prompts else None
        return model.encode(texts, batch_size=batch_size, task=task)
    return encode
