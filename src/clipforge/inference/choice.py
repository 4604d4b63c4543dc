"""Which inference path each tower of a model takes on this machine.

Every candidate path (:mod:`clipforge.inference.paths`) runs the tower on the same probe batch as
eager fp32 does: it must agree (the least cosine between its normalised features and eager fp32's
at least :data:`AGREEMENT`) and beat eager fp32 by :data:`MIN_GAIN` to be chosen; the fastest such
path wins. The measurement is cached per model (its weights' fingerprint) and machine (CPU or GPU,
threads, library versions) under ``$CLIPFORGE_CACHE/inference``, so it runs once.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clipforge.engine.precision import native_bf16
from clipforge.errors import ConfigError
from clipforge.inference.options import BACKENDS, PRECISIONS
from clipforge.inference.paths import EAGER_FP32, TOWERS, InferencePath, wrap_tower

log = logging.getLogger(__name__)

AGREEMENT = 0.999  # bf16 weights give 0.9999 on ViT-B/32; int8 text towers 0.997 (docs/benchmarks.md)
MIN_GAIN = 1.05  # what a path must gain over eager fp32 to replace it
LOWER_PRECISION_GAIN = 1.1  # and a lower precision over the fastest fp32 path (equal features are worth 10%)
PROBE_BATCH = 16
_PROBE_CAPTIONS = ("a photo of a dog", "a small red circle in the top left corner of the image",
                   "two blue stars to the left of a large green hexagon", "a cat", "an empty street at night",
                   "a purple cross above a yellow triangle and a small orange square")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "cpu"


def _ort_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


def machine_key(device: torch.device) -> dict[str, Any]:
    """What the speed of a path depends on besides the model."""
    key: dict[str, Any] = {"device": device.type, "torch": torch.__version__, "threads": torch.get_num_threads(),
                           "onnxruntime": _ort_version()}
    if device.type == "cuda":
        key["gpu"] = torch.cuda.get_device_name(device)
    else:
        key.update(cpu=_cpu_name(), cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None)
    return key


def check_request(backend: str, precision: str, device: torch.device) -> None:
    """Refuse, in one line, what cannot run: an unknown value, ONNX off the CPU or below fp32, fp16 on
    a CPU, int8 on a GPU."""
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if backend == "onnx" and device.type != "cpu":
        raise ConfigError(f"--backend onnx runs on the CPU; the device is {device} (pass --device cpu)")
    if backend == "onnx" and precision not in ("auto", "fp32"):
        raise ConfigError(f"--backend onnx runs fp32 graphs; --precision {precision} needs --backend torch")
    if backend == "compile" and precision == "int8":
        raise ConfigError("--backend compile compiles fp32, bf16 or fp16 towers; --precision int8 needs "
                          "--backend torch")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA device (on a CPU, try bf16)")
    if precision == "int8" and device.type != "cpu":
        raise ConfigError("--precision int8 (dynamic quantisation) runs on the CPU only")


def candidates(device: torch.device, backend: str = "auto", precision: str = "auto") -> list[InferencePath]:
    """The paths worth measuring on ``device`` that the request allows; eager fp32 first (the reference).

    ``auto`` leaves out what cannot win: bf16 where it is emulated (slower than fp32), ONNX without
    ONNX Runtime installed. ``torch.compile`` is measured only when asked for (``backend="compile"``):
    compiling each tower costs tens of seconds before the first batch."""
    paths = [EAGER_FP32]
    if device.type == "cuda":
        paths.append(InferencePath("torch", "fp16"))
        if native_bf16(device):
            paths.append(InferencePath("torch", "bf16"))
    else:
        if native_bf16(device) or precision == "bf16":
            paths.append(InferencePath("torch", "bf16"))
        paths.append(InferencePath("torch", "int8"))
        if _ort_version() is not None or backend == "onnx":
            paths.append(InferencePath("onnx", "fp32"))
    if backend == "compile":
        paths += [InferencePath("compile", p.precision) for p in paths
                  if p.backend == "torch" and p.precision != "int8"]
    return [p for p in paths if backend in ("auto", p.backend) and precision in ("auto", p.precision)]


def probe_inputs(model: nn.Module, n: int = PROBE_BATCH) -> dict[str, torch.Tensor]:
    """A batch of each tower's input: rendered scenes (preprocessed as the model does) and captions."""
    from clipforge.data.synthetic import SynthConfig, generate

    inputs: dict[str, torch.Tensor] = {}
    if getattr(model, "visual", None) is not None:
        pre = model.preprocess
        scenes = generate("val", SynthConfig(image_size=max(64, pre.image_size), n_val=n))
        inputs["image"] = torch.stack([pre(img) for img, _, _ in scenes])
    if getattr(model, "text", None) is not None and getattr(model, "tokenizer", None) is not None:
        captions = [_PROBE_CAPTIONS[i % len(_PROBE_CAPTIONS)] for i in range(n)]
        inputs["text"] = model.tokenizer(captions)
    return inputs


def _timed(fn, x: torch.Tensor, device: torch.device, reps: int = 3, min_seconds: float = 0.3
           ) -> tuple[torch.Tensor, float]:
    """The output and the median seconds of at least ``reps`` calls and ``min_seconds``, after a warm-up."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        out = fn(x)
        times: list[float] = []
        while len(times) < reps or sum(times) < min_seconds:
            sync()
            t0 = time.perf_counter()
            fn(x)
            sync()
            times.append(time.perf_counter() - t0)
    return out.float(), sorted(times)[len(times) // 2]


_RUNNERS: dict[tuple[str, int], Any] = {}  # ONNX Runtime sessions already loaded in this process


def _onnx_runner(model: nn.Module, folder: Path):
    """The exported graphs (exported into ``folder`` once, loaded once per process), or the reason
    there are none."""
    from clipforge.checkpoints.onnx import OnnxCLIP, export_onnx, is_onnx_folder

    key = (str(folder), torch.get_num_threads())
    try:
        if key not in _RUNNERS:
            if not is_onnx_folder(folder):
                export_onnx(copy.deepcopy(model).cpu(), folder)
            _RUNNERS[key] = OnnxCLIP(folder, threads=key[1])
        return _RUNNERS[key]
    except Exception as e:  # noqa: BLE001 -- a tower the exporter cannot trace: that path is not offered
        return (str(e).splitlines() or [type(e).__name__])[0][:200]


def measure_paths(model: nn.Module, paths: list[InferencePath], device: torch.device,
                  onnx_folder: Path | None = None) -> dict[str, list[dict[str, Any]]]:
    """For each tower, one row per path: seconds per item, speed-up over eager fp32, the least cosine
    and the largest difference between its normalised features and eager fp32's (or the error)."""
    inputs = {k: v.to(device) for k, v in probe_inputs(model).items()}
    onnx = None
    if any(p.backend == "onnx" for p in paths) and onnx_folder is not None:
        onnx = _onnx_runner(model, onnx_folder)
    rows: dict[str, list[dict[str, Any]]] = {}
    for tower, x in inputs.items():
        original = getattr(model, TOWERS[tower])
        ref, ref_sec = None, None
        rows[tower] = []
        for path in [EAGER_FP32, *[p for p in paths if p != EAGER_FP32]]:
            row: dict[str, Any] = {"path": path.label}
            try:
                if path.backend == "onnx":
                    if not callable(getattr(onnx, f"encode_{tower}", None)):
                        raise RuntimeError(onnx if isinstance(onnx, str) else "no ONNX export")
                    fn = wrap_tower(original, path, getattr(onnx, f"encode_{tower}"))
                else:
                    fn = original if path == EAGER_FP32 else wrap_tower(copy.deepcopy(original), path)
                out, sec = _timed(fn, x, device)
            except Exception as e:  # noqa: BLE001 -- a path that fails here is a path not taken
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}" if str(e) else type(e).__name__
                rows[tower].append(row)
                continue
            out = torch.nn.functional.normalize(out, dim=-1)
            if ref is None:
                ref, ref_sec = out, sec
            cos = torch.nn.functional.cosine_similarity(out, ref, dim=-1)
            row.update(ms_per_item=1000 * sec / len(x), speedup=ref_sec / sec, min_cosine=float(cos.min()),
                       max_abs_diff=float((out - ref).abs().max()))
            rows[tower].append(row)
    return rows


def pick(rows: list[dict[str, Any]]) -> InferencePath:
    """The fastest path that agrees with eager fp32 and beats it by :data:`MIN_GAIN`, else eager fp32;
    a lower precision must also beat the fastest fp32 path by :data:`LOWER_PRECISION_GAIN`."""
    ok = [(InferencePath.parse(r["path"]), r["speedup"]) for r in rows
          if "error" not in r and r["min_cosine"] >= AGREEMENT]
    fp32 = max((speedup for path, speedup in ok if path.precision == "fp32"), default=1.0)
    ok = [(path, speedup) for path, speedup in ok if speedup >= MIN_GAIN
          and (path.precision == "fp32" or speedup >= LOWER_PRECISION_GAIN * fp32)]
    return max(ok, key=lambda p: p[1])[0] if ok else EAGER_FP32


def _cache_file(model: nn.Module, device: torch.device, backend: str, precision: str) -> Path:
    from clipforge.data.datasets import cache_dir
    from clipforge.evaluation.cache import model_fingerprint

    key = json.dumps({**machine_key(device), "backend": backend, "precision": precision}, sort_keys=True)
    return cache_dir() / "inference" / f"{model_fingerprint(model)}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.json"


def choose_paths(model: nn.Module, device: torch.device, backend: str = "auto", precision: str = "auto",
                 use_cache: bool = True) -> tuple[dict[str, InferencePath], dict[str, Any]]:
    """The path of each tower and the measurement behind it (empty when nothing had to be measured)."""
    from clipforge.data.datasets import cache_dir
    from clipforge.evaluation.cache import model_fingerprint
    from clipforge.io import atomic_write_text

    check_request(backend, precision, device)
    towers = [t for t, attr in TOWERS.items() if getattr(model, attr, None) is not None]
    options = candidates(device, backend, precision)
    if len(options) == 1 or not towers:  # the request names one path: nothing to measure
        return {t: options[0] for t in towers}, {}
    cache = _cache_file(model, device, backend, precision)
    if use_cache and cache.is_file():
        report = json.loads(cache.read_text())
    else:
        log.info("measuring %s on this machine for this model (once; cached in %s)",
                 ", ".join(p.label for p in options), cache.parent)
        onnx_folder = cache_dir() / "inference" / "onnx" / model_fingerprint(model)
        report = {"machine": machine_key(device), "request": {"backend": backend, "precision": precision},
                  "agreement": AGREEMENT, "min_gain": MIN_GAIN,
                  "towers": measure_paths(model, options, device, onnx_folder)}
        if use_cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(json.dumps(report, indent=2), cache)
    # Eager fp32 is among the options whenever there is a choice, so falling back to it honours the request.
    return {t: pick(report["towers"][t]) if t in report["towers"] else EAGER_FP32 for t in towers}, report


def apply_paths(model: nn.Module, paths: dict[str, InferencePath]) -> nn.Module:
    """Run each tower of ``model`` (in place) the way ``paths`` says; ``model.inference_paths`` names them."""
    from clipforge.data.datasets import cache_dir
    from clipforge.evaluation.cache import model_fingerprint

    onnx = None
    if any(p != EAGER_FP32 for p in paths.values()):
        model_fingerprint(model)  # of the weights as loaded, before any cast: indexes and caches name the model by it
    for tower, path in paths.items():
        if path == EAGER_FP32:
            continue
        run = None
        if path.backend == "onnx":
            onnx = onnx or _onnx_runner(model, cache_dir() / "inference" / "onnx" / model_fingerprint(model))
            if isinstance(onnx, str):
                raise ConfigError(f"--backend onnx: the model does not export to ONNX ({onnx})")
            run = getattr(onnx, f"encode_{tower}")
        setattr(model, TOWERS[tower], wrap_tower(getattr(model, TOWERS[tower]), path, run))
    model.inference_paths = {t: p.label for t, p in paths.items()}
    return model


def prepare_for_inference(model: nn.Module, device: torch.device | str, backend: str = "auto",
                          precision: str = "auto", use_cache: bool = True) -> nn.Module:
    """``model`` on ``device``, each tower on the path :func:`choose_paths` picks; logs the choice."""
    device = torch.device(device)
    model = model.to(device).eval()
    paths, report = choose_paths(model, device, backend, precision, use_cache)
    apply_paths(model, paths)
    if any(p != EAGER_FP32 for p in paths.values()):
        log.info("inference: %s", "; ".join(describe(t, p, report) for t, p in paths.items()))
    return model


def describe(tower: str, path: InferencePath, report: dict[str, Any]) -> str:
    """``image torch-bf16 (3.41x eager fp32, cosine 0.99994)``: a tower's path and what was measured."""
    row = next((r for r in report.get("towers", {}).get(tower, []) if r["path"] == path.label), {})
    measured = f" ({row['speedup']:.2f}x eager fp32, cosine {row['min_cosine']:.5f})" if "speedup" in row else ""
    return f"{tower} {path.label}{measured}"
