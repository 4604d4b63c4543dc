"""Training checkpoints: written atomically, the last K kept, ``latest`` resumable.

A checkpoint is a folder ``checkpoints/step_000123/`` holding the model in clipforge's format
(``model/``), the optimiser state (``optimizer.pt``, plain tensors, read with
``weights_only=True``) and ``state.json`` (step, epoch, position in the epoch, history, skips).
It is written under a temporary name and renamed, and ``checkpoints/latest`` is updated after
the rename: a crash mid-save leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from clipforge.checkpoints.native import save as save_model
from clipforge.checkpoints.state_dict import atomic_write_text
from clipforge.errors import CheckpointError


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    samples_seen: int = 0
    nonfinite_steps: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)


def commit_checkpoint(root: Path, name: str, write: Callable[[Path], None], keep: int) -> Path:
    """Write a checkpoint folder atomically: ``write(tmp)`` fills a temporary folder, which is renamed
    to ``root/name``; then ``root/latest`` names it and all but the newest ``keep`` are removed."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
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


def save_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: TrainState,
                    keep: int = 3) -> Path:
    def write(tmp: Path) -> None:
        save_model(model, tmp / "model")  # type: ignore[arg-type]
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(asdict(state)))

    return commit_checkpoint(run_dir / "checkpoints", f"step_{state.step:07d}", write, keep)


def resolve_checkpoint(run_dir: Path, which: str) -> Path:
    """``latest`` or a checkpoint folder -> the checkpoint folder."""
    return latest_checkpoint(run_dir / "checkpoints", which)


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> TrainState:
    from clipforge.checkpoints.state_dict import load_strict, read_state_dict

    load_strict(model, read_state_dict(path / "model" / "model.safetensors"), str(path / "model"))
    try:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    except Exception as e:
        raise CheckpointError(f"{path / 'optimizer.pt'}: cannot restore the optimiser ({e})") from None
    return TrainState(**json.loads((path / "state.json").read_text()))
