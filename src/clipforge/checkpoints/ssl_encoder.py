"""A self-supervised image encoder saved on its own (``encoder.safetensors`` + ``encoder.json``): what
``clipforge ssl train`` writes and what a CLIP model's image tower can start from."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from clipforge.errors import CheckpointError
from clipforge.io import atomic_folder
from clipforge.models.config import CLIPConfig


def save_encoder(encoder: nn.Module, config: CLIPConfig, out: Path) -> Path:
    with atomic_folder(out) as tmp:
        save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(tmp / "encoder.safetensors"))
        (tmp / "encoder.json").write_text(json.dumps({"format": "clipforge", "arch": "image_encoder",
                                                      "embed_dim": config.embed_dim,
                                                      "vision": config.to_dict()["vision"]}, indent=2))
    return out


def load_encoder_into(visual: nn.Module, config: CLIPConfig, folder: str | Path) -> None:
    """Copy a saved SSL encoder into a CLIP model's image tower (configs must agree)."""
    folder = Path(folder)
    meta_path = folder / "encoder.json"
    if not meta_path.is_file():
        raise CheckpointError(f"{folder}: not an SSL encoder folder (no encoder.json)")
    meta = {k: v for k, v in json.loads(meta_path.read_text()).items() if k in ("embed_dim", "vision")}
    mine = {"embed_dim": config.embed_dim, "vision": config.to_dict()["vision"]}
    if meta != mine:
        raise CheckpointError(f"{folder}: encoder config {meta} differs from the CLIP model's image tower {mine}; "
                              "set model.overrides to match it")
    from clipforge.checkpoints.state_dict import load_strict

    load_strict(visual, load_file(str(folder / "encoder.safetensors")), str(folder))


def is_encoder_folder(folder: Path) -> bool:
    return (folder / "encoder.json").is_file() and (folder / "encoder.safetensors").is_file()


def load_encoder(folder: str | Path) -> nn.Module:
    """A saved image encoder (arch ``image_encoder``) as a module, with ``.config`` (its CLIPConfig)."""
    from clipforge.checkpoints.state_dict import load_strict
    from clipforge.models.towers import build_image_tower

    folder = Path(folder)
    meta = json.loads((folder / "encoder.json").read_text())
    arch = meta.get("arch", "image_encoder")
    if arch != "image_encoder":
        raise CheckpointError(f"{folder}: unknown arch {arch!r} in encoder.json")
    config = CLIPConfig.from_dict({"embed_dim": meta["embed_dim"], "vision": meta["vision"], "activation": "gelu"})
    encoder = build_image_tower(config)
    load_strict(encoder, load_file(str(folder / "encoder.safetensors")), str(folder))
    encoder.config = config
    return encoder.eval()
