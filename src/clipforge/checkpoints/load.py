"""``clipforge.load``: one entry point for every supported checkpoint.

Recognised sources:

* a clipforge folder (``config.json`` with ``"format": "clipforge"`` and its ``"arch"``: ``clip``), or
  an image encoder folder (``encoder.json``, arch ``image_encoder``, written by ``clipforge ssl train``),
  which loads as the encoder module itself;
* a sentence encoder folder in sentence-transformers' layout (``modules.json``; clipforge's name arch
  ``sentence_encoder`` in ``clipforge.json``), which loads as a
  :class:`~clipforge.models.sentence_encoder.SentenceEncoder`;
* a Hugging Face ``CLIPModel`` folder (``config.json`` with ``model_type: clip``);
* an open_clip folder or file: a state dict (safetensors or weights-only torch file) with an
  open_clip JSON model config beside it (``open_clip_config.json``, ``config.json`` or
  ``<weights stem>.json``) or given as ``config``;
* an OpenAI CLIP checkpoint: their state dict, or their TorchScript archive (read without
  executing it); the config is read off the weights' shapes.

The activation is taken from the source where the source says it (OpenAI: QuickGELU; open_clip's
JSON ``quick_gelu``; HF ``hidden_act``). A ``config`` whose activation contradicts it is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clipforge.checkpoints import hf, native, openai, openclip, openclip_coca, sentence_transformers
from clipforge.checkpoints.ssl_encoder import is_encoder_folder, load_encoder
from clipforge.checkpoints.state_dict import is_torchscript_archive, load_strict, read_state_dict
from clipforge.errors import ActivationMismatchError, CheckpointError
from clipforge.images.preprocess import OPENAI_MEAN, OPENAI_STD, Preprocess
from clipforge.models.clip import CLIP
from clipforge.models.coca import CoCa, CoCaConfig
from clipforge.models.config import CLIPConfig
from clipforge.models.named import get_config

ConfigLike = CLIPConfig | str | Path | dict[str, Any] | None
_WEIGHT_NAMES = ("open_clip_model.safetensors", "model.safetensors", "open_clip_pytorch_model.bin",
                 "pytorch_model.bin")
_CONFIG_NAMES = ("open_clip_config.json", "config.json")


def load(path: str | Path, config: ConfigLike = None) -> CLIP:
    """Load a CLIP model from any supported checkpoint (see the module docstring).

    Args:
        path: a folder or a weights file.
        config: for sources that carry no config: a :class:`CLIPConfig`, a named config
            (``"ViT-B-32"``), a path to an open_clip or clipforge JSON config, or a dict.

    The returned model is in eval mode, has ``model.tokenizer`` (``None`` if unknown) and
    ``model.preprocess`` set.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    model = _load(path, config)
    return model.eval()


def _load(path: Path, config: ConfigLike) -> CLIP:
    if path.is_dir() and is_encoder_folder(path):
        _refuse_config(config, path, "an image encoder folder carries its own config")
        return load_encoder(path)  # type: ignore[return-value]
    if path.is_dir() and sentence_transformers.is_sentence_folder(path):
        _refuse_config(config, path, "a sentence encoder folder carries its own config")
        return sentence_transformers.load_sentence_encoder(path)  # type: ignore[return-value]
    if path.is_dir():
        cfg_path = next((path / n for n in _CONFIG_NAMES if (path / n).is_file()), None)
        cfg = _read_json(cfg_path) if cfg_path else None
        if cfg is not None and native.is_native_config(cfg):
            _refuse_config(config, path, "a clipforge folder carries its own config")
            return native.load_native(path, cfg)
        if cfg is not None and hf.is_hf_config(cfg):
            return _load_hf(path, cfg, config)
        weights = next((path / n for n in _WEIGHT_NAMES if (path / n).is_file()), None)
        if weights is None:  # open_clip's flat layout: NAME.safetensors beside NAME.json
            weights = next((w for w in sorted(path.glob("*.safetensors")) if w.with_suffix(".json").is_file()), None)
        if weights is None:
            raise CheckpointError(
                f"{path}: no weights found (looked for {', '.join(_WEIGHT_NAMES)} and NAME.safetensors "
                "beside NAME.json)"
            )
        return _load_state_dict_file(weights, config, cfg)
    return _load_state_dict_file(path, config, None)


def _load_hf(folder: Path, cfg: dict[str, Any], config: ConfigLike) -> CLIP:
    source_config = hf.config_from_hf(cfg, str(folder / "config.json"))
    clip_config = _resolve(config, source_config, str(folder))
    weights = folder / "model.safetensors"
    if not weights.is_file():
        weights = folder / "pytorch_model.bin"
    sd = hf.state_dict_from_hf(read_state_dict(weights))
    model = CLIP(clip_config)
    load_strict(model, sd, str(weights))
    model.preprocess = _hf_preprocess(folder, clip_config)
    model.tokenizer = _default_tokenizer(clip_config)
    return model


def _load_state_dict_file(weights: Path, config: ConfigLike, sibling: dict[str, Any] | None) -> CLIP:
    torchscript = is_torchscript_archive(weights)
    sd = read_state_dict(weights)
    preprocess_cfg: dict[str, Any] = {}
    if torchscript or _looks_openai(sd):
        source_config = openai.infer_config(sd, activation="quick_gelu")
        source = f"{weights} (OpenAI checkpoint, QuickGELU)"
    else:
        if sibling is None:
            sibling = _find_sibling_config(weights)
        if sibling is not None and openclip_coca.is_coca_config(sibling):
            _refuse_config(config, weights, "an open_clip CoCa checkpoint is described by its own config")
            return _load_coca(sd, sibling, weights)
        if sibling is not None and openclip.is_openclip_config(sibling):
            source_config = openclip.config_from_openclip(sibling, str(weights))
            _, preprocess_cfg = openclip.unwrap_openclip_config(sibling)
            source = f"{weights} (open_clip config: {source_config.activation})"
        else:
            source_config = None
            source = str(weights)
    clip_config = _resolve(config, source_config, source)
    if clip_config is None:
        raise CheckpointError(
            f"{weights}: no model config found beside it; pass one (a named config such as "
            "ViT-B-32, or an open_clip JSON config)"
        )
    model = CLIP(clip_config)
    load_strict(model, openclip.state_dict_from_openclip(sd), str(weights))
    model.preprocess = Preprocess(
        image_size=clip_config.vision.image_size,
        mean=tuple(preprocess_cfg.get("mean", OPENAI_MEAN)),
        std=tuple(preprocess_cfg.get("std", OPENAI_STD)),
        interpolation=preprocess_cfg.get("interpolation", "bicubic"),
    )
    model.tokenizer = _default_tokenizer(clip_config)
    return model


def _load_coca(sd: dict[str, Any], cfg: dict[str, Any], weights: Path):
    model = openclip_coca.coca_from_openclip(sd, cfg, str(weights))
    _, preprocess_cfg = openclip.unwrap_openclip_config(cfg)
    model.preprocess = Preprocess(
        image_size=model.config.vision.image_size,
        mean=tuple(preprocess_cfg.get("mean", OPENAI_MEAN)),
        std=tuple(preprocess_cfg.get("std", OPENAI_STD)),
        interpolation=preprocess_cfg.get("interpolation", "bicubic"),
    )
    if model.config.text.vocab_size == 49408:  # open_clip's CoCa models use OpenAI's BPE
        from clipforge.tokenizer import BPETokenizer

        model.tokenizer = BPETokenizer(context_length=model.config.text.context_length)
    return model


def _looks_openai(sd: dict[str, Any]) -> bool:
    # OpenAI's models keep these scalars beside the weights (their build_model drops them).
    return any(k in sd for k in ("input_resolution", "context_length", "vocab_size"))


def _resolve(config: ConfigLike, source_config: CLIPConfig | None, source: str) -> CLIPConfig | None:
    """The user's config if given (checked against what the source says), else the source's."""
    if config is None:
        return source_config
    user = model_config(config)
    if source_config is not None and user.activation != source_config.activation:
        raise ActivationMismatchError(
            f"{source} was trained with {source_config.activation} but the config asks for "
            f"{user.activation}; the mismatch silently costs accuracy, so it is refused. "
            f"Use a config with activation={source_config.activation!r}."
        )
    return user


def model_config(config: ConfigLike) -> CLIPConfig | CoCaConfig:
    """The model config ``config`` names (named, JSON path, dict or config), without building the model."""
    if isinstance(config, (CLIPConfig, CoCaConfig)):
        return config
    if isinstance(config, dict):
        return _config_from_dict(config, "config")
    text = str(config)
    if text.endswith(".json") or Path(text).is_file():
        return _config_from_dict(_read_json(Path(text)), text)
    return get_config(text)


def _config_from_dict(d: dict[str, Any], source: str) -> CLIPConfig | CoCaConfig:
    if native.is_native_config(d):
        config_class, _ = native.ARCHS.get(d.get("arch", "clip"), native.ARCHS["clip"])
        return config_class.from_dict(d["model"])
    if openclip_coca.is_coca_config(d):
        return openclip_coca.config_from_openclip_coca(d, source)
    if "decoder" in d:
        return CoCaConfig.from_dict(d)
    if openclip.is_openclip_config(d):
        return openclip.config_from_openclip(d, source)
    if hf.is_hf_config(d):
        return hf.config_from_hf(d, source)
    return CLIPConfig.from_dict(d)


def _find_sibling_config(weights: Path) -> dict[str, Any] | None:
    for candidate in (weights.with_suffix(".json"), *(weights.parent / n for n in _CONFIG_NAMES)):
        if candidate.is_file():
            d = _read_json(candidate)
            if openclip.is_openclip_config(d) or openclip_coca.is_coca_config(d):
                return d
    return None


def _refuse_config(config: ConfigLike, path: Path, why: str) -> None:
    if config is not None:
        raise CheckpointError(f"{path}: do not pass a config: {why}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable JSON config ({e})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return d


def _hf_preprocess(folder: Path, config: CLIPConfig) -> Preprocess:
    pre_path = folder / "preprocessor_config.json"
    pre = _read_json(pre_path) if pre_path.is_file() else {}
    return Preprocess(
        image_size=config.vision.image_size,
        mean=tuple(pre.get("image_mean", OPENAI_MEAN)),
        std=tuple(pre.get("image_std", OPENAI_STD)),
    )


def _default_tokenizer(config: CLIPConfig) -> Any:
    """OpenAI's BPE for models with its vocabulary; otherwise unknown (None)."""
    if getattr(config.text, "vocab_size", None) == 49408:  # an HF text tower has its own (saved with it)
        from clipforge.tokenizer import BPETokenizer

        return BPETokenizer(context_length=config.text.context_length)
    return None


def no_tokenizer_message(model: CLIP) -> str:
    """Why ``model.tokenizer`` is None and what gives a model one (for text-needing commands)."""
    vocab = getattr(model.config.text, "vocab_size", None) or model.config.text.hf_config.get("vocab_size")
    return (f"no tokenizer is known for this model: its text vocabulary has {vocab} tokens, not the 49408 of "
            "OpenAI's BPE that clipforge bundles, and its checkpoint carries none; a clipforge model folder "
            "keeps the tokenizer it was trained with (clipforge train writes one)")


def build(config: ConfigLike) -> CLIP | CoCa:
    """A freshly initialised model from a config (named, JSON path, dict, CLIPConfig or CoCaConfig)."""
    clip_config = model_config(config)
    model = CoCa(clip_config) if isinstance(clip_config, CoCaConfig) else CLIP(clip_config)
    model.tokenizer = _default_tokenizer(clip_config)
    return model
