"""The judge: a separate CLIP that scores what generators and captioners make (never one that
guided them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from clipforge.errors import ConfigError


def load_judge(path: str | Path, device: torch.device) -> Any:
    """A CLIP to judge with; it must embed text (it scores captions and prompts)."""
    from clipforge.checkpoints import load

    judge = load(path).to(device)
    judge.source = str(path)
    if judge.tokenizer is None:
        raise ConfigError(f"--judge {path}: the judge CLIP has no tokenizer to embed captions with")
    return judge
