"""Reading weight files safely and loading them strictly into a model.

Weights are read with safetensors or ``torch.load(weights_only=True)``: nothing is unpickled but
tensors and plain containers.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from clipforge.errors import CheckpointError
from clipforge.io import atomic_file, atomic_write_text

__all__ = ["atomic_save_safetensors", "atomic_write_text", "load_strict", "read_state_dict"]

StateDict = dict[str, torch.Tensor]

# Wrappers training scripts put around a state dict (open_clip writes {"state_dict": ...}).
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


def is_torchscript_archive(path: Path) -> bool:
    """A TorchScript archive is a zip holding compiled code next to its pickled data."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any(n.split("/", 1)[-1].startswith("code/") for n in names) or any(
        n.endswith("/constants.pkl") for n in names
    )


def read_state_dict(path: str | Path) -> StateDict:
    """Read a state dict from a ``.safetensors`` file or a weights-only torch file.

    Unwraps ``{"state_dict": ...}`` containers and strips the ``module.`` prefix DDP adds.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty")
    if _is_safetensors(path):
        try:
            sd: object = load_file(str(path))
        except Exception as e:  # safetensors raises several types for a corrupt header
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    else:
        if is_torchscript_archive(path):
            from clipforge.checkpoints.torchscript import read_torchscript_state_dict

            return read_torchscript_state_dict(path)
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{path}: {explain_load_error(e)}") from None
    return _unwrap(sd, path)


def explain_load_error(e: Exception) -> str:
    """What ``torch.load(weights_only=True)`` refused, in one line.

    PyTorch's own message leads with advice to rerun with ``weights_only=False`` (arbitrary code
    execution) and buries the refused global in the middle; keep only the facts.
    """
    text = str(e)
    refused = re.search(r"GLOBAL ([\w.]+)", text)
    if refused:
        return (f"refused: the file asks to unpickle {refused.group(1)}, which no weights file holds "
                "(clipforge only reads tensors, never pickled code)")
    if "Unsupported operand" in text or "invalid load key" in text:
        return "not a torch checkpoint or safetensors file (its bytes are no weights-only pickle)"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    facts = [ln for ln in lines if "weights_only" not in ln and not ln.startswith("Check the documentation")]
    return f"not a weights-only torch checkpoint or safetensors file ({(facts or ['unreadable'])[0]})"


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(16)
    # An 8-byte little-endian header length followed by a JSON object.
    return len(head) >= 9 and head[8:9] == b"{"


def _unwrap(obj: object, path: Path) -> StateDict:
    while isinstance(obj, Mapping) and not _is_tensor_dict(obj):
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
        else:
            raise CheckpointError(
                f"{path}: expected a state dict of tensors, found a mapping with keys "
                f"{sorted(obj)[:8]}"
            )
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _is_tensor_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _tied(sd: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Keys whose tensor is an earlier key's (tied weights: GPT-2's output head is its token
    embedding), mapped to that key."""
    first: dict[tuple, str] = {}
    out = {}
    for k, v in sd.items():
        ident = (v.device.type, v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()))
        if v.numel() and ident in first:
            out[k] = first[ident]
        else:
            first.setdefault(ident, k)
    return out


def unshared(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``sd`` without the keys of tied weights (safetensors refuses shared tensors; the model's own
    tie restores them when loading, see :func:`load_strict`)."""
    tied = _tied(sd)
    return {k: v for k, v in sd.items() if k not in tied}


def load_strict(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str, limit: int = 5) -> None:
    """Copy ``sd`` into ``model``, or raise one error listing what does not fit.

    Lists the first ``limit`` missing, unexpected and shape-mismatched keys. A tied weight saved
    once (:func:`unshared`) is not missing.
    """
    own = model.state_dict()
    sd = dict(sd)
    for alias, origin in _tied(own).items():
        if alias not in sd and origin in sd:
            sd[alias] = sd[origin]
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [
        f"{k} (checkpoint {tuple(sd[k].shape)}, model {tuple(own[k].shape)})"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched)):
        if keys:
            more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
            problems.append(f"{len(keys)} {label}: {', '.join(keys[:limit])}{more}")
    if problems:
        raise CheckpointError(f"{source} does not fit the model config: " + "; ".join(problems))
    model.load_state_dict(dict(sd), strict=True)


def atomic_save_safetensors(sd: Mapping[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> None:
    """Write a safetensors file via a temporary file and a rename: never a half-written file."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in unshared(sd).items()}
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
