"""clipforge's own format: a folder with ``config.json`` and ``model.safetensors``.

``config.json``::

    {"format": "clipforge", "format_version": 1,
     "model": {...CLIPConfig...},
     "tokenizer": {"type": "openai_bpe" | "bpe", "context_length": 77, "file": "tokenizer.json"},
     "preprocess": {"image_size": 224, "mean": [...], "std": [...], "interpolation": "bicubic"}}

A trained tokenizer is saved beside them as ``tokenizer.json``, so a model trained from scratch
carries its tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clipforge.checkpoints.state_dict import (
    atomic_save_safetensors,
    atomic_write_text,
    load_strict,
    read_state_dict,
)
from clipforge.errors import CheckpointError
from clipforge.images.preprocess import Preprocess
from clipforge.models.bag_of_words import BagOfWords, BagOfWordsConfig
from clipforge.models.clip import CLIP
from clipforge.models.coca import CoCa, CoCaConfig
from clipforge.models.config import CLIPConfig

#: Saved ``arch`` -> (config class, model class) of the models a clipforge folder may hold.
ARCHS = {"clip": (CLIPConfig, CLIP), "coca": (CoCaConfig, CoCa), "bag_of_words": (BagOfWordsConfig, BagOfWords)}
#: Archs of the task families (above this floor): module and class names, imported when loaded.
FAMILY_ARCHS = {"prefix_captioner": ("clipforge.captioning.prefix", "PrefixConfig", "PrefixCaptioner"),
                "iterative_captioner": ("clipforge.captioning.iterative", "IterativeConfig", "IterativeCaptioner"),
                "clip_diffusion": ("clipforge.generation.diffusion", "DiffusionConfig", "CLIPDiffusion"),
                "unclip": ("clipforge.generation.unclip", "UnCLIPConfig", "UnCLIP"),
                "bound_clip": ("clipforge.bind.model", "BoundConfig", "BoundCLIP"),
                "text_gan": ("clipforge.generation.gan", "GANConfig", "TextGAN"),
                "controlgan": ("clipforge.generation.controlgan", "ControlGANConfig", "ControlGAN"),
                "aligndraw": ("clipforge.generation.aligndraw", "AlignDRAWConfig", "AlignDRAW"),
                "dvae": ("clipforge.generation.dvae", "DVAEConfig", "DiscreteVAE"),
                "vqvae": ("clipforge.generation.vqvae", "VQVAEConfig", "VQVAE"),
                "dalle": ("clipforge.generation.dalle", "DALLEConfig", "DALLE"),
                "dalle_mini": ("clipforge.generation.dalle_mini", "DALLEMiniConfig", "DALLEMini")}
FORMAT = "clipforge"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"


def is_native_config(d: dict[str, Any]) -> bool:
    return d.get("format") == FORMAT and "model" in d


def tokenizer_to_dict(tokenizer: Any) -> dict[str, Any] | None:
    return None if tokenizer is None else tokenizer.to_dict()


def tokenizer_from_dict(d: dict[str, Any] | None, folder: Path | None) -> Any:
    """Build the tokenizer a config names (``None`` when the model has none)."""
    if not d:
        return None
    from clipforge.tokenizer import BPETokenizer, HFTokenizer, TrainedBPETokenizer

    kind = d.get("type")
    ctx = d.get("context_length", 77)
    if kind == "openai_bpe":
        return BPETokenizer(context_length=ctx)
    if kind in ("bpe", "hf", "causal"):
        if folder is None:
            raise CheckpointError("a trained tokenizer needs the model folder to load from")
        path = folder / d.get("file", TOKENIZER_FILE)
        if not path.is_file():
            raise CheckpointError(f"{path}: the model's tokenizer file is missing")
        if kind == "hf":
            return HFTokenizer.load(path, ctx, d.get("pad_token_id", 0))
        if kind == "causal":
            from clipforge.tokenizer.causal import CausalLMTokenizer

            return CausalLMTokenizer.load(path, d["sot_token_id"], d["eot_token_id"], ctx)
        return TrainedBPETokenizer.load(path, ctx)
    raise CheckpointError(f"unknown tokenizer type {kind!r} (expected 'openai_bpe', 'bpe', 'hf' or 'causal')")


def save(model: CLIP, out_dir: str | Path) -> Path:
    """Save ``model`` (weights, config, tokenizer, preprocessing) in clipforge's format.

    Each file is written to a temporary name and renamed, the config last, so an interrupted save
    never leaves a folder that loads with mismatched parts.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(model.state_dict(), out / WEIGHTS_FILE, metadata={"format": "pt"})
    if model.tokenizer is not None and getattr(model.tokenizer, "kind", None) in ("bpe", "hf", "causal"):
        model.tokenizer.save(out / TOKENIZER_FILE)
    cfg = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": getattr(model, "arch", "clip"),
        "model": model.config.to_dict(),
        "tokenizer": tokenizer_to_dict(model.tokenizer),
        "preprocess": model.preprocess.to_dict() if model.preprocess is not None else None,
    }
    atomic_write_text(json.dumps(cfg, indent=2), out / CONFIG_FILE)
    return out


def load_native(folder: str | Path, cfg: dict[str, Any] | None = None) -> CLIP:
    folder = Path(folder)
    if cfg is None:
        cfg = json.loads((folder / CONFIG_FILE).read_text())
    version = cfg.get("format_version", 1)
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{folder}: format version {version} is newer than this clipforge reads ({FORMAT_VERSION}); "
            "upgrade clipforge"
        )
    arch = cfg.get("arch", "clip")  # folders saved before the key existed are CLIP models
    if arch in FAMILY_ARCHS:
        import importlib

        module_name, config_name, model_name = FAMILY_ARCHS[arch]
        module = importlib.import_module(module_name)
        config_class, model_class = getattr(module, config_name), getattr(module, model_name)
    elif arch in ARCHS:
        config_class, model_class = ARCHS[arch]
    else:
        raise CheckpointError(f"{folder}: unknown arch {arch!r} (this clipforge loads: "
                              f"{', '.join([*ARCHS, *FAMILY_ARCHS])}, image_encoder)")
    model = model_class(config_class.from_dict(cfg["model"]))
    weights = folder / WEIGHTS_FILE
    load_strict(model, read_state_dict(weights), str(weights))
    model.tokenizer = tokenizer_from_dict(cfg.get("tokenizer"), folder)
    if cfg.get("preprocess"):
        model.preprocess = Preprocess.from_dict(cfg["preprocess"])
    if hasattr(model, "attach_clip") and Path(getattr(model.config, "clip_path", "") or "-").exists():
        from clipforge.checkpoints.load import load

        model.attach_clip(load(model.config.clip_path))  # a captioner or generator with the CLIP it reads
    return model
