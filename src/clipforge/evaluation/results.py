"""Result files (CLIP_benchmark's layout and metric keys) and the table that summarises a folder of them."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

from clipforge.errors import ClipforgeError
from clipforge.io import atomic_write_text

# The metrics shown in report tables, in this order, when present.
TABLE_METRICS = ("acc1", "acc5", "mean_per_class_recall", "lp_acc1", "lp_acc5", "lp_mean_per_class_recall",
                 "image_retrieval_recall@1", "image_retrieval_recall@5", "text_retrieval_recall@1",
                 "text_retrieval_recall@5", "acc1_clean", "acc1_overlap")


def write_result(out_dir: str | Path, task: str, model: str, dataset: str, metrics: dict[str, Any],
                 settings: dict[str, Any] | None = None) -> Path:
    """``{"task", "model", "dataset", "metrics", "settings"}`` as JSON; returns the file."""
    import math

    from clipforge import __version__

    bad = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
    if bad:
        raise ClipforgeError(f"{task} on {dataset}: metric(s) {', '.join(bad)} are not finite; no result written")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    safe = lambda s: "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s)[-60:]  # noqa: E731
    path = out / f"{task}__{safe(Path(model).name or model)}__{safe(dataset)}.json"
    doc = {"task": task, "model": model, "dataset": dataset, "metrics": metrics, "settings": settings or {},
           "clipforge_version": __version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_text(json.dumps(doc, indent=2, default=float), path)
    return path


def collect(folder: str | Path) -> list[dict[str, Any]]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ClipforgeError(f"{folder}: no such results folder")
    docs = []
    for p in sorted(folder.glob("*.json")):
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError:
            continue
        if isinstance(d, dict) and "metrics" in d and "task" in d:
            docs.append(d)
    if not docs:
        raise ClipforgeError(f"{folder}: no result files (written by clipforge eval)")
    return docs


def report_tables(folder: str | Path) -> tuple[str, str]:
    """(Markdown, CSV) with one row per result file and a column per metric present."""
    docs = collect(folder)
    metrics = [m for m in TABLE_METRICS if any(m in d["metrics"] for d in docs)]
    header = ["task", "model", "dataset", *metrics]
    rows = []
    for d in docs:
        row = [d["task"], Path(d["model"]).name or d["model"], d["dataset"]]
        for m in metrics:
            v = d["metrics"].get(m)
            row.append("" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v))
        rows.append(row)
    md = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return "\n".join(md), buf.getvalue()
