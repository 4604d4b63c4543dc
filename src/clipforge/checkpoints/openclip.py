"""open_clip checkpoints: its JSON model config and its state dicts (OpenAI's key layout).

An open_clip model is described by a JSON config such as ``ViT-B-32.json``::

    {"embed_dim": 512, "quick_gelu": true,
     "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
     "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}}

Hugging Face hub repos of open_clip wrap it as ``{"model_cfg": {...}, "preprocess_cfg": {...}}``.
Options of open_clip that change the computation and that clipforge does not implement (timm or
HF towers, layer scale, attentional pooling ...) are refused rather than silently ignored.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clipforge.checkpoints.openai import from_openai_layout, to_openai_layout
from clipforge.checkpoints.state_dict import StateDict, atomic_save_safetensors, atomic_write_text
from clipforge.errors import CheckpointError
from clipforge.models.clip import CLIP
from clipforge.models.config import CLIPConfig, ResNetConfig, TextConfig, ViTConfig

# Keys that do not change a forward pass in eval mode, or that only describe the fixture.
_IGNORED = {"format", "start_token", "end_token", "custom_text", "patch_dropout", "output_tokens",
            "output_dict", "cast_dtype"}
# Options with the value at which open_clip computes what clipforge computes.
_NEUTRAL = {
    "ls_init_value": None, "attentional_pool": False, "no_ln_pre": False, "pool_type": None,
    "final_ln_after_pool": False, "global_average_pool": False, "embed_cls": False,
    "timm_model_name": None, "hf_model_name": None, "output_tokens": False, "act_kwargs": None,
    "norm_kwargs": None, "proj_bias": False, "pad_id": 0, "no_causal_mask": False,
    "attn_pooler_queries": None, "attn_pooler_heads": None,
    # Attention and embedding variants of open_clip's custom blocks.
    "pos_embed_type": "learnable", "block_type": None, "qk_norm": False, "scaled_cosine_attn": False,
    "scale_heads": False, "scale_attn_inner": False, "scale_attn": False, "scale_fc": False,
}
# Values other than the neutral one that still compute what clipforge computes.
_ALSO_OK = {"block_type": ("default",)}
# pool_type values that are clipforge's own pooling.
_POOL_OK = {"vision_cfg": ("tok", None), "text_cfg": ("argmax", None)}


def unwrap_openclip_config(d: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Returns (model_cfg, preprocess_cfg) from either open_clip JSON shape."""
    if "model_cfg" in d:
        return d["model_cfg"], d.get("preprocess_cfg", {}) or {}
    return d, {}


def is_openclip_config(d: dict[str, Any]) -> bool:
    model_cfg, _ = unwrap_openclip_config(d)
    return "vision_cfg" in model_cfg and "text_cfg" in model_cfg


def config_from_openclip(d: dict[str, Any], source: str = "open_clip config") -> CLIPConfig:
    """An open_clip JSON model config -> :class:`CLIPConfig`."""
    d, _ = unwrap_openclip_config(d)
    for section in ("vision_cfg", "text_cfg"):
        if section not in d:
            raise CheckpointError(f"{source}: not an open_clip model config (no {section!r})")
    v, t = dict(d["vision_cfg"]), dict(d["text_cfg"])
    for where, sub in (("vision_cfg", v), ("text_cfg", t), ("", d)):
        _refuse_unsupported(sub, where, source)
    if isinstance(v.get("layers"), (list, tuple)):
        vision: ViTConfig | ResNetConfig = ResNetConfig(
            image_size=_size(v.get("image_size", 224)), layers=tuple(v["layers"]),
            width=v.get("width", 64), head_width=v.get("head_width", 64),
        )
    else:
        vision = ViTConfig(
            image_size=_size(v.get("image_size", 224)), patch_size=_size(v.get("patch_size", 16)),
            width=v.get("width", 768), layers=v.get("layers", 12),
            head_width=v.get("head_width", 64), mlp_ratio=v.get("mlp_ratio", 4.0),
        )
    text = TextConfig(
        context_length=t.get("context_length", 77), vocab_size=t.get("vocab_size", 49408),
        width=t.get("width", 512), heads=t.get("heads", 8), layers=t.get("layers", 12),
        mlp_ratio=t.get("mlp_ratio", 4.0),
    )
    return CLIPConfig(
        embed_dim=d["embed_dim"], vision=vision, text=text,
        activation="quick_gelu" if d.get("quick_gelu", False) else "gelu",
        init_logit_bias=d.get("init_logit_bias"),
    )


def _size(x: int | list[int]) -> int:
    if isinstance(x, (list, tuple)):
        if len(set(x)) != 1:
            raise CheckpointError(f"non-square size {list(x)} is not supported")
        return int(x[0])
    return int(x)


def _refuse_unsupported(d: dict[str, Any], where: str, source: str) -> None:
    for key, value in d.items():
        if key in _IGNORED or key not in _NEUTRAL:
            continue
        ok = _POOL_OK.get(where, (None,)) if key == "pool_type" else (_NEUTRAL[key], *_ALSO_OK.get(key, ()))
        if value not in ok and not (value in (None, False, {}) and _NEUTRAL[key] in (None, False)):
            name = f"{where}.{key}" if where else key
            raise CheckpointError(
                f"{source}: open_clip option {name}={value!r} is not supported by clipforge"
            )


def config_to_openclip(config: CLIPConfig) -> dict[str, Any]:
    """:class:`CLIPConfig` -> open_clip JSON model config."""
    v = config.vision
    if isinstance(v, ResNetConfig) and v.stem != "clip":
        raise CheckpointError("open_clip has no small-stem ResNet; keep this model in clipforge's format")
    if isinstance(v, ResNetConfig):
        vision = {"image_size": v.image_size, "layers": list(v.layers), "width": v.width,
                  "head_width": v.head_width}
    else:
        vision = {"image_size": v.image_size, "layers": v.layers, "width": v.width,
                  "patch_size": v.patch_size, "head_width": v.head_width, "mlp_ratio": v.mlp_ratio}
    t = config.text
    out: dict[str, Any] = {
        "embed_dim": config.embed_dim,
        "vision_cfg": vision,
        "text_cfg": {"context_length": t.context_length, "vocab_size": t.vocab_size,
                     "width": t.width, "heads": t.heads, "layers": t.layers, "mlp_ratio": t.mlp_ratio},
    }
    if config.activation == "quick_gelu":
        out["quick_gelu"] = True
    if config.init_logit_bias is not None:
        out["init_logit_bias"] = config.init_logit_bias
    return out


def state_dict_from_openclip(sd: StateDict) -> StateDict:
    return from_openai_layout(sd)


def state_dict_to_openclip(sd: StateDict) -> StateDict:
    return to_openai_layout(sd)


def export_openclip(model: CLIP, out_dir: str | Path, layout: str = "flat") -> Path:
    """Write the model for open_clip, in one of two layouts.

    ``"flat"`` (default): ``NAME.json``, the flat model config that ``open_clip.add_model_config``
    registers under NAME (the folder's name), and ``NAME.safetensors``; in open_clip:
    ``add_model_config(out_dir / "NAME.json")`` then ``create_model("NAME", pretrained=...)``. A flat
    config has no room for preprocessing: open_clip uses OpenAI's mean/std unless told otherwise.
    ``"hub"``: ``open_clip_config.json`` (``{"model_cfg", "preprocess_cfg"}``) and
    ``open_clip_model.safetensors``, the Hugging Face hub layout ``create_model("local-dir:" + out_dir)`` reads.
    """
    if getattr(model, "arch", "clip") == "coca":
        from clipforge.checkpoints.openclip_coca import export_openclip_coca

        return export_openclip_coca(model, out_dir, layout)
    if layout not in ("flat", "hub"):
        raise CheckpointError(f"open_clip layout must be 'flat' or 'hub', got {layout!r}")
    out = Path(out_dir)
    sd = state_dict_to_openclip(model.state_dict())
    if layout == "flat":
        name = out.resolve().name
        atomic_save_safetensors(sd, out / f"{name}.safetensors")
        atomic_write_text(json.dumps(config_to_openclip(model.config), indent=2), out / f"{name}.json")
        return out
    atomic_save_safetensors(sd, out / "open_clip_model.safetensors")
    p = model.preprocess
    cfg = {
        "model_cfg": config_to_openclip(model.config),
        "preprocess_cfg": {"mean": list(p.mean), "std": list(p.std), "interpolation": p.interpolation,
                           "resize_mode": "shortest"},
    }
    atomic_write_text(json.dumps(cfg, indent=2), out / "open_clip_config.json")
    return out
