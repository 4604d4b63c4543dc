"""Sentence encoders in sentence-transformers' folder layout, both ways.

A folder holds the transformer (``config.json``, ``model.safetensors``, tokenizer files),
``modules.json`` (Transformer -> Pooling -> optional Normalize), ``1_Pooling/config.json``,
``sentence_bert_config.json`` (``max_seq_length``) and ``config_sentence_transformers.json``
(``prompts``: the task instructions). clipforge adds ``clipforge.json`` naming the ``arch``;
sentence-transformers ignores it, and a folder without it (one sentence-transformers wrote) loads too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clipforge.errors import CheckpointError
from clipforge.io import atomic_folder
from clipforge.models.sentence_encoder import SentenceEncoder, SentenceEncoderConfig

_ST_TYPES = "sentence_transformers.models"
_MARKER = "clipforge.json"


def is_sentence_folder(path: Path) -> bool:
    return (path / "modules.json").is_file() or _arch(path) == SentenceEncoder.arch


def _arch(path: Path) -> str | None:
    marker = path / _MARKER
    if not marker.is_file():
        return None
    return json.loads(marker.read_text()).get("arch")


def _read(path: Path, name: str, default: Any = None) -> Any:
    file = path / name
    if not file.is_file():
        return default
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: not valid JSON ({e.msg})") from None


def read_config(folder: Path) -> SentenceEncoderConfig:
    """Pooling, normalisation, length and prompts from a sentence-transformers folder's files."""
    modules = _read(folder, "modules.json", [])
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    unknown = [k for k in kinds if k not in ("Transformer", "Pooling", "Normalize")]
    if unknown:
        raise CheckpointError(f"{folder}/modules.json: modules {unknown} are not supported "
                              "(clipforge reads Transformer, Pooling and Normalize)")
    pooling = "mean"
    pool_dir = next((m["path"] for m in modules if m.get("type", "").endswith("Pooling")), None)
    if pool_dir is not None:
        p = _read(folder / pool_dir, "config.json", {})
        pooling = "cls" if p.get("pooling_mode_cls_token") or p.get("pooling_mode") == "cls" else "mean"
        others = [k for k in ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens") if p.get(k)]
        if others or p.get("pooling_mode") not in (None, "mean", "cls"):
            raise CheckpointError(f"{folder}/{pool_dir}/config.json: only mean or CLS pooling is supported")
    st = _read(folder, "sentence_bert_config.json", {})
    prompts = _read(folder, "config_sentence_transformers.json", {}).get("prompts") or {}
    return SentenceEncoderConfig(pooling=pooling, normalize="Normalize" in kinds or not modules,
                                 max_length=int(st.get("max_seq_length", 128)), prompts=dict(prompts))


def load_sentence_encoder(folder: str | Path) -> SentenceEncoder:
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: no config.json (a sentence encoder folder holds its transformer there)")
    return SentenceEncoder.from_pretrained(str(folder), read_config(folder)).eval()


def save_sentence_encoder(model: SentenceEncoder, out: str | Path) -> Path:
    """Write ``model`` atomically in sentence-transformers' layout (plus ``clipforge.json``)."""
    out = Path(out)
    cfg = model.config
    with atomic_folder(out) as tmp:
        model.encoder.save_pretrained(str(tmp), safe_serialization=True)
        model.tokenizer.save_pretrained(str(tmp))
        modules = [{"idx": 0, "name": "0", "path": "", "type": f"{_ST_TYPES}.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": f"{_ST_TYPES}.Pooling"}]
        if cfg.normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": f"{_ST_TYPES}.Normalize"})
            (tmp / "2_Normalize").mkdir()
        (tmp / "modules.json").write_text(json.dumps(modules, indent=2))
        (tmp / "1_Pooling").mkdir()
        (tmp / "1_Pooling" / "config.json").write_text(json.dumps({
            "word_embedding_dimension": model.dim, "pooling_mode_cls_token": cfg.pooling == "cls",
            "pooling_mode_mean_tokens": cfg.pooling == "mean", "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False, "include_prompt": True}, indent=2))
        (tmp / "sentence_bert_config.json").write_text(json.dumps(
            {"max_seq_length": cfg.max_length, "do_lower_case": False}, indent=2))
        (tmp / "config_sentence_transformers.json").write_text(json.dumps(
            {"prompts": cfg.prompts, "default_prompt_name": None, "similarity_fn_name": "cosine"}, indent=2))
        (tmp / _MARKER).write_text(json.dumps({"format": "clipforge", "arch": SentenceEncoder.arch}, indent=2))
    return out
