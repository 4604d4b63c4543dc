"""A self-supervised image encoder saved on its own (``encoder.safetensors`` + ``encoder.json``): what
``clipforge ssl train`` writes and what a CLIP model's image tower can start from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from clipforge.errors import CheckpointError
from clipforge.models.config import CLIPConfig


def save_encoder(encoder: nn.Module, config: CLIPConfig, out: Path) -> Path:
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(tmp / "encoder.safetensors"))
    (tmp / "encoder.json").write_text(json.dumps({"embed_dim": config.embed_dim,
                                                  "vision": config.to_dict()["vision"]}, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def load_encoder_into(visual: nn.Module, config: CLIPConfig, folder: str | Path) -> None:
    """Copy a saved SSL encoder into a CLIP model's image tower (configs must agree)."""
    folder = Path(folder)
    meta_path = folder / "encoder.json"
    if not meta_path.is_file():
        raise CheckpointError(f"{folder}: not an SSL encoder folder (no encoder.json)")
    meta = json.loads(meta_path.read_text())
    mine = {"embed_dim": config.embed_dim, "vision": config.to_dict()["vision"]}
    if meta != mine:
        raise CheckpointError(f"{folder}: encoder config {meta} differs from the CLIP model's image tower {mine}; "
                              "set model.overrides to match it")
    from clipforge.checkpoints.state_dict import load_strict

    load_strict(visual, load_file(str(folder / "encoder.safetensors")), str(folder))
