"""Training text: (anchor, positive[, negative]) rows from a CSV/TSV, or raw sentences.

A CSV with an anchor and a positive column gives pairs (a negative column adds a hard negative per
row); a CSV with one text column, or a plain text file (one sentence per line), gives raw sentences
(unsupervised SimCSE, or pretraining from scratch). Rows with the wrong number of fields, an empty
text or bytes that are not UTF-8 are skipped and counted, never fatal.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from clipforge.data.pairs import find_column
from clipforge.errors import DataError

log = logging.getLogger(__name__)

ANCHOR_COLUMNS = ("anchor", "query", "sentence1", "question")
POSITIVE_COLUMNS = ("positive", "passage", "sentence2", "answer", "document")
NEGATIVE_COLUMNS = ("negative", "hard_negative")
TEXT_COLUMNS = ("text", "sentence", "caption")


@dataclass
class TextData:
    """``anchors`` and ``positives`` (pairs) or ``anchors`` only (raw sentences); ``negatives`` optional."""

    anchors: list[str]
    positives: list[str] | None = None
    negatives: list[str] | None = None
    skipped: Counter = field(default_factory=Counter)
    source: str = ""

    @property
    def is_pairs(self) -> bool:
        return self.positives is not None

    def __len__(self) -> int:
        return len(self.anchors)


def _decoded_lines(path: Path, skipped: Counter) -> list[str]:
    """The file's lines; a line that is not UTF-8 is counted and left out."""
    out = []
    for raw in path.read_bytes().splitlines():
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            skipped["undecodable bytes"] += 1
    return out


def read_text_data(path: str | Path, anchor_column: str | None = None, positive_column: str | None = None,
                   negative_column: str | None = None, text_column: str | None = None) -> TextData:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected a CSV/TSV of pairs or a text file of sentences)")
    skipped: Counter = Counter()
    lines = _decoded_lines(path, skipped)
    if path.suffix.lower() not in (".csv", ".tsv", ".tab"):
        sentences = [s for line in lines if (s := " ".join(line.split()))]
        empty = sum(1 for line in lines if not line.strip())
        if empty:
            skipped["empty text"] += empty
        return _report(TextData(sentences, skipped=skipped, source=str(path)))
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    reader = csv.reader(io.StringIO("\n".join(lines) + "\n"), delimiter=sep)
    header = [c.strip() for c in next(reader, [])]
    where = str(path)
    anchor = find_column(header, anchor_column, ANCHOR_COLUMNS, "anchor", where, required=False)
    columns: list[str | None]
    if anchor is None:
        columns = [find_column(header, text_column, TEXT_COLUMNS, "text", where)]
    else:
        columns = [anchor, find_column(header, positive_column, POSITIVE_COLUMNS, "positive", where),
                   find_column(header, negative_column, NEGATIVE_COLUMNS, "negative", where, required=False)]
    index = [header.index(c) if c else None for c in columns]
    values: list[list[str]] = [[] for _ in columns]
    for row in reader:
        if not row:
            continue
        if len(row) != len(header):
            skipped["wrong number of fields"] += 1
            continue
        texts = [" ".join(row[i].split()) if i is not None else "" for i in index]
        if any(not t for t, i in zip(texts, index) if i is not None):
            skipped["empty text"] += 1
            continue
        for v, t in zip(values, texts):
            v.append(t)
    if len(columns) == 1:
        return _report(TextData(values[0], skipped=skipped, source=where))
    return _report(TextData(values[0], values[1], values[2] if columns[2] else None, skipped, where))


def _report(data: TextData) -> TextData:
    if data.skipped:
        what = ", ".join(f"{n} {why}" for why, n in sorted(data.skipped.items()))
        log.warning(f"{data.source}: skipped {sum(data.skipped.values())} rows ({what})")
    if not data.anchors:
        raise DataError(f"{data.source}: no usable rows")
    return data
