"""Read the weights of a TorchScript archive (OpenAI's released ``.pt`` files) without running it.

A TorchScript archive is a zip: compiled code under ``code/``, and the module tree pickled in
``data.pkl`` as ``__torch__.*`` objects whose attributes are tensors (storages in ``data/``) and
sub-modules. :class:`_Unpickler` resolves only those names to inert stand-ins, so neither the
archive's code nor any other Python callable is ever executed or imported.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from clipforge.errors import CheckpointError

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _ScriptObject:
    """Stand-in for a ``__torch__.*`` module: keeps the attribute dict it is built with."""

    def __init__(self, *args: Any) -> None:
        self.attrs: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.attrs = state


class _Storage:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple, stride: tuple, *_: Any) -> torch.Tensor:
    return torch.as_strided(storage, tuple(size), tuple(stride), offset).clone()


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str, source: str) -> None:
        import io

        super().__init__(io.BytesIO(data))
        self.zf, self.prefix, self.source = zf, prefix, source

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("__torch__"):
            return type(name, (_ScriptObject,), {})
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, requires_grad, hooks, *a: data
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "collections" and name == "OrderedDict":
            return dict
        raise CheckpointError(
            f"{self.source}: TorchScript archive refers to {module}.{name}, which clipforge will "
            "not load; convert it first: in Python with open_clip or OpenAI's clip installed, "
            "`torch.save(torch.jit.load(path, map_location='cpu').state_dict(), 'weights.pt')`"
        )

    def persistent_load(self, pid: Any) -> torch.Tensor:
        # ('storage', dtype, key, location, numel)
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise CheckpointError(f"{self.source}: unexpected persistent id {pid!r}")
        _, dtype, key, _location, numel = pid
        if isinstance(dtype, _Storage):
            dtype = dtype.dtype
        raw = bytearray(self.zf.read(f"{self.prefix}/data/{key}"))
        if not raw:
            return torch.empty(0, dtype=dtype)
        return torch.frombuffer(raw, dtype=dtype)[:numel]


def read_torchscript_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor attribute of the archived module tree, keyed by its dotted path."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise CheckpointError(f"{path}: not a TorchScript archive (bad zip)") from None
    with zf:
        pkl = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pkl:
            raise CheckpointError(f"{path}: TorchScript archive without data.pkl")
        prefix = pkl[0].split("/")[0]
        try:
            root = _Unpickler(zf.read(pkl[0]), zf, prefix, str(path)).load()
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"{path}: cannot read TorchScript archive ({e})") from None
    if not isinstance(root, _ScriptObject):
        raise CheckpointError(f"{path}: TorchScript archive does not hold a module")
    out: dict[str, torch.Tensor] = {}
    _collect(root, "", out, set())
    if not out:
        raise CheckpointError(f"{path}: TorchScript archive holds no tensors")
    return out


def _collect(obj: _ScriptObject, prefix: str, out: dict[str, torch.Tensor], seen: set[int]) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    for name, value in obj.attrs.items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        elif isinstance(value, _ScriptObject):
            _collect(value, f"{prefix}{name}.", out, seen)
