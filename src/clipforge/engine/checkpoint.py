"""Training checkpoints: written atomically, the last K kept, ``latest`` resumable.

A checkpoint is a folder ``checkpoints/step_0000123/`` holding what the task saves (its model),
the optimiser state (``optimizer.pt``, plain tensors, read with ``weights_only=True``) and
``state.json`` (step, epoch, position in the epoch, history, skips). It is written under a
temporary name and renamed, and ``checkpoints/latest`` is updated after the rename: a crash
mid-save leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipforge.errors import CheckpointError
from clipforge.io import atomic_folder, atomic_write_text


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    samples_seen: int = 0
    nonfinite_steps: int = 0
    train_seconds: float = 0.0
    wall_seconds: float = 0.0  # the whole run's, resumes included (what minutes= counts)
    skipped: dict[str, int] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)


def commit_checkpoint(root: Path, name: str, write: Callable[[Path], None], keep: int) -> Path:
    """Write a checkpoint folder atomically: ``write(tmp)`` fills a temporary folder, which is renamed
    to ``root/name``; then ``root/latest`` names it and all but the newest ``keep`` are removed."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    with atomic_folder(final) as tmp:
        write(tmp)
    atomic_write_text(name, root / "latest")
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path, which: str, marker: str = "state.json") -> Path:
    """``latest`` or an explicit folder -> the checkpoint folder (which must hold ``marker``)."""
    if which == "latest":
        pointer = root / "latest"
        if not pointer.is_file():
            raise CheckpointError(f"{root.parent}: no checkpoint to resume from (no {root.name}/latest)")
        path = root / pointer.read_text().strip()
    else:
        path = Path(which)
    if not (path / marker).is_file():
        raise CheckpointError(f"{path}: not a training checkpoint (no {marker})")
    return path


def truncate_log(path: Path, step: int) -> None:
    """Keep only the JSON lines of ``path`` whose step is at most ``step`` (atomically): on resume the
    steps an interrupted run logged after its last checkpoint are done again."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= step]
    if len(kept) != len(lines):
        atomic_write_text("".join(kept), path)
