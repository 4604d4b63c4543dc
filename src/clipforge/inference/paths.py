"""How one tower of a loaded model runs for inference: a backend (eager torch, torch.compile or ONNX
Runtime) and a precision (fp32; bf16 or fp16 weights; int8 dynamic quantisation of the linear layers).

A path is applied by replacing ``model.visual`` or ``model.text`` with a wrapper that takes and
returns what the eager tower does (float32 features), so every caller of ``encode_image`` /
``encode_text`` runs it unchanged. :mod:`clipforge.inference.choice` measures the paths and picks one.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

TOWERS = {"image": "visual", "text": "text"}  # tower name -> the model's attribute


@dataclass(frozen=True)
class InferencePath:
    """One way to run a tower: ``backend`` ``torch``, ``compile`` or ``onnx``, ``precision`` fp32/bf16/fp16/int8."""

    backend: str = "torch"
    precision: str = "fp32"

    @property
    def label(self) -> str:
        return f"{self.backend}-{self.precision}"

    @classmethod
    def parse(cls, label: str) -> InferencePath:
        backend, _, precision = label.partition("-")
        return cls(backend, precision)


EAGER_FP32 = InferencePath("torch", "fp32")


def is_convolutional(tower: nn.Module) -> bool:
    """More than one 2-d convolution (a ResNet, not a ViT's patch embedding): channels-last helps it."""
    return sum(isinstance(m, nn.Conv2d) for m in tower.modules()) > 1


class _Wrapped(nn.Module):
    """A tower behind a wrapper: attributes the wrapper lacks are the tower's (``config``, ...)."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)


class CastTower(_Wrapped):
    """The tower's weights in ``dtype`` (cast once, not per call as autocast does), channels-last for a
    convolutional tower; float inputs are cast on the way in, features come back float32."""

    def __init__(self, tower: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.channels_last = is_convolutional(tower)
        self.inner = tower.to(dtype)
        if self.channels_last:
            self.inner.to(memory_format=torch.channels_last)
        self.dtype_ = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():
            x = x.to(self.dtype_)
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
        return self.inner(x).float()


class Int8Tower(_Wrapped):
    """The tower with its ``nn.Linear`` layers dynamically quantised to int8 (weights int8, activations
    quantised per batch), CPU only."""

    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        with warnings.catch_warnings():  # torch points to torchao for new code; the eager API still works
            warnings.simplefilter("ignore")
            self.inner = torch.ao.quantization.quantize_dynamic(tower, {nn.Linear}, dtype=torch.qint8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


class OnnxTower(nn.Module):
    """A tower run by an ONNX Runtime graph (:class:`clipforge.checkpoints.onnx.OnnxCLIP`); its
    features come back normalised, as the graphs compute them."""

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], config: object = None) -> None:
        super().__init__()
        self.run = run
        self.config = config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x).to(x.device)


class CompiledTower(_Wrapped):
    """The tower (already on its precision's path) under ``torch.compile`` (inductor). The first call of
    each input shape compiles; the batch dimension is compiled dynamic, so a last, smaller batch does
    not compile again."""

    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        self.inner = tower
        self.compiled = torch.compile(tower, dynamic=True)
        # The text towers' padding trim reads the longest caption's length (``.item()``): dynamo splits
        # the graph there and logs a page of advice per tower; the split graph runs correctly.
        logging.getLogger("torch._dynamo.variables.tensor").setLevel(logging.ERROR)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.compiled(x)


def wrap_tower(tower: nn.Module, path: InferencePath, onnx_run: Callable | None = None) -> nn.Module:
    """``tower`` run the way ``path`` says (the tower itself for eager fp32). Casting works in place:
    pass a copy to keep the original."""
    if path.backend == "compile":
        return CompiledTower(wrap_tower(tower, InferencePath("torch", path.precision)))
    if path.backend == "onnx":
        if onnx_run is None:
            raise ValueError("an ONNX path needs the exported graph's runner")
        return OnnxTower(onnx_run, getattr(tower, "config", None))
    if path.precision == "fp32":
        return tower
    if path.precision == "int8":
        return Int8Tower(tower)
    return CastTower(tower, {"bf16": torch.bfloat16, "fp16": torch.float16}[path.precision])
