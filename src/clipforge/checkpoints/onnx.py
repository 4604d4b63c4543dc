"""A CLIP model as two ONNX graphs (``clipforge export --to onnx``) and their ONNX Runtime wrapper.

``image.onnx`` maps ``pixels`` float32 [N, 3, S, S] (preprocessed) to normalised features [N, D];
``text.onnx`` maps ``tokens`` int64 [N, L] (L up to the context length) to normalised features.
Batch and text length are dynamic. The text graph has no padding trimming inside (a data-dependent
shape an exported graph cannot hold); :class:`OnnxCLIP` trims the tokens before the call, which
gives the same features because the text tower is causal. ``onnx.json`` holds what a user of the
graphs needs (preprocessing, tokenizer, dimensions) and the agreement with the eager model measured
at export; the tokenizer's file sits beside it. Needs ``pip install 'clipforge[onnx]'``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from clipforge.checkpoints.native import TOKENIZER_FILE, tokenizer_from_dict, tokenizer_to_dict
from clipforge.errors import CheckpointError, ConfigError
from clipforge.images.preprocess import Preprocess
from clipforge.io import atomic_folder

MANIFEST = "onnx.json"
TOLERANCE = 1e-4  # max |eager - ONNX Runtime| of a normalised feature accepted at export


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("ONNX export and inference need onnx, onnxscript and onnxruntime: "
                          "pip install 'clipforge[onnx]'") from None
    return onnxruntime


class _ImageGraph(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels, normalize=True)


class _TextGraph(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        feats = self.model.text.forward_tokens(tokens, trim=False)["pooled"]
        return torch.nn.functional.normalize(feats, dim=-1)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter logs its steps and torchvision's absence; a user wants the result line."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def is_onnx_folder(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def _session(path: Path, threads: int | None = None):
    ort = _ort()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _check_inputs(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    size = model.config.vision.image_size
    pixels = torch.randn(5, 3, size, size, generator=g)
    captions = ["a red circle", "two blue stars to the left of a large green hexagon", "x",
                "a photo of a dog", "a small purple cross at the top"]
    tokens = model.tokenizer(captions) if model.tokenizer is not None else torch.randint(
        1, model.config.text.vocab_size, (5, model.config.text.context_length), generator=g)
    return pixels, tokens


def export_onnx(model: nn.Module, out: str | Path, source: str = "") -> dict[str, Any]:
    """Write ``model``'s towers as ONNX graphs to ``out`` (atomically), check each against the eager
    model with ONNX Runtime, and return the manifest (with ``max_abs_diff`` per graph)."""
    _ort()
    if not callable(getattr(model, "encode_image", None)) or getattr(model, "text", None) is None:
        raise ConfigError(f"{source or 'the model'}: not a CLIP with an image and a text tower; only those export "
                          "to ONNX for now")
    model = model.float().eval()
    pixels, tokens = _check_inputs(model)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    length = torch.export.Dim("length", min=2, max=model.config.text.context_length)
    out = Path(out)
    with atomic_folder(out) as tmp:
        diffs = {}
        for name, graph, example, dynamic in (
            ("image", _ImageGraph(model), pixels, {"pixels": {0: batch}}),
            ("text", _TextGraph(model), tokens, {"tokens": {0: batch, 1: length}}),
        ):
            with _quiet_exporter():
                torch.onnx.export(graph, (example,), str(tmp / f"{name}.onnx"), dynamic_shapes=dynamic, dynamo=True,
                                  external_data=False, verbose=False)
            session = _session(tmp / f"{name}.onnx")
            probe = torch.cat([example, example[:2]])  # another batch size than the one exported with
            with torch.no_grad():
                want = graph(probe).numpy()
            got = session.run(None, {session.get_inputs()[0].name: probe.numpy()})[0]
            diffs[name] = float(np.abs(got - want).max())
            if not diffs[name] <= TOLERANCE:
                raise CheckpointError(f"{name}.onnx differs from the eager model by {diffs[name]:.2e} "
                                      f"(more than {TOLERANCE:g}); not exported")
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is not None and getattr(tokenizer, "kind", None) in ("bpe", "hf", "causal"):
            tokenizer.save(tmp / TOKENIZER_FILE)
        manifest = {"format": "clipforge-onnx", "source": source, "embed_dim": model.config.embed_dim,
                    "context_length": model.config.text.context_length,
                    "preprocess": model.preprocess.to_dict() if model.preprocess is not None else None,
                    "tokenizer": tokenizer_to_dict(tokenizer), "max_abs_diff": diffs,
                    "graphs": {"image": "image.onnx", "text": "text.onnx"}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


class OnnxCLIP:
    """The exported graphs under ONNX Runtime, with the eager model's interface for embedding:
    ``encode_image(pixels)``, ``encode_text(tokens)`` (normalised float32 tensors), ``preprocess``
    and ``tokenizer``."""

    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        folder = Path(folder)
        if not is_onnx_folder(folder):
            raise CheckpointError(f"{folder}: not an ONNX export (no {MANIFEST}; run clipforge export --to onnx)")
        self.folder = folder
        self.manifest = json.loads((folder / MANIFEST).read_text())
        self.image = _session(folder / self.manifest["graphs"]["image"], threads)
        self.text = _session(folder / self.manifest["graphs"]["text"], threads)
        pre = self.manifest.get("preprocess")
        self.preprocess = Preprocess.from_dict(pre) if pre else None
        self.tokenizer = tokenizer_from_dict(self.manifest.get("tokenizer"), folder)

    def encode_image(self, pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        arr = pixels.detach().float().cpu().numpy()
        return torch.from_numpy(self.image.run(None, {"pixels": arr})[0])

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        tokens = tokens.detach().cpu().long()
        if tokens.shape[0]:
            tokens = tokens[:, : max(2, int(tokens.argmax(dim=-1).max()) + 1)]  # the eager tower's trimming
        return torch.from_numpy(self.text.run(None, {"tokens": tokens.numpy()})[0])
