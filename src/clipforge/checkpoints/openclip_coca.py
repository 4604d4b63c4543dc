"""open_clip's CoCa checkpoints: its JSON config (``multimodal_cfg`` beside ``vision_cfg`` and
``text_cfg``) and its state dicts, whose key names are :class:`~clipforge.models.coca.CoCa`'s own.

Only open_clip's original CoCa computation is implemented (a boolean ``attentional_pool``, the CLS
embedding appended to the text, its legacy padding mask); its other variants are refused by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clipforge.checkpoints.state_dict import StateDict, atomic_save_safetensors, atomic_write_text
from clipforge.errors import CheckpointError
from clipforge.models.coca import CoCa, CoCaConfig, DecoderConfig
from clipforge.models.config import TextConfig, ViTConfig

# open_clip defaults where its configs leave a key out.
_POOLER_QUERIES, _POOLER_HEADS = 256, 8
_REFUSED = {
    ("vision_cfg", "attentional_pool"): lambda v: v is not True,
    ("vision_cfg", "ls_init_value"): lambda v: v is not None,
    ("vision_cfg", "timm_model_name"): lambda v: v is not None,
    ("text_cfg", "embed_cls"): lambda v: v is not True,
    ("text_cfg", "hf_model_name"): lambda v: v is not None,
    ("text_cfg", "correct_cls_mask"): lambda v: bool(v),
    ("text_cfg", "ls_init_value"): lambda v: v is not None,
    ("multimodal_cfg", "ls_init_value"): lambda v: v is not None,
}


def is_coca_config(d: dict[str, Any]) -> bool:
    d = d.get("model_cfg", d)
    return "multimodal_cfg" in d and "vision_cfg" in d and "text_cfg" in d


def config_from_openclip_coca(d: dict[str, Any], source: str = "open_clip CoCa config") -> CoCaConfig:
    d = d.get("model_cfg", d)
    v, t, m = dict(d["vision_cfg"]), dict(d["text_cfg"]), dict(d["multimodal_cfg"])
    for (section, key), bad in _REFUSED.items():
        sub = {"vision_cfg": v, "text_cfg": t, "multimodal_cfg": m}[section]
        if key in sub and bad(sub[key]) or (key in ("attentional_pool", "embed_cls") and key not in sub):
            raise CheckpointError(f"{source}: open_clip option {section}.{key}={sub.get(key)!r} is not supported "
                                  "by clipforge's CoCa")
    vision = ViTConfig(image_size=int(v.get("image_size", 224)), patch_size=int(v.get("patch_size", 16)),
                       width=v.get("width", 768), layers=v.get("layers", 12), head_width=v.get("head_width", 64),
                       mlp_ratio=v.get("mlp_ratio", 4.0))
    text = TextConfig(context_length=t.get("context_length", 77), vocab_size=t.get("vocab_size", 49408),
                      width=t.get("width", 512), heads=t.get("heads", 8), layers=t.get("layers", 12),
                      mlp_ratio=t.get("mlp_ratio", 4.0))
    decoder = DecoderConfig(width=m.get("width", 512), layers=m.get("layers", 12), heads=m.get("heads", 8),
                            mlp_ratio=m.get("mlp_ratio", 4.0), context_length=m.get("context_length", 77),
                            vocab_size=m.get("vocab_size", 49408))
    return CoCaConfig(embed_dim=d["embed_dim"], vision=vision, text=text, decoder=decoder,
                      attn_pooler_queries=v.get("attn_pooler_queries", _POOLER_QUERIES),
                      attn_pooler_heads=v.get("attn_pooler_heads", _POOLER_HEADS),
                      activation="quick_gelu" if d.get("quick_gelu") else "gelu",
                      pad_id=t.get("pad_id", d.get("pad_token", 0)),
                      start_id=d.get("start_token", 49406), end_id=d.get("end_token", 49407))


def config_to_openclip_coca(c: CoCaConfig) -> dict[str, Any]:
    v, t, m = c.vision, c.text, c.decoder
    out: dict[str, Any] = {
        "embed_dim": c.embed_dim,
        "vision_cfg": {"image_size": v.image_size, "layers": v.layers, "width": v.width, "patch_size": v.patch_size,
                       "head_width": v.head_width, "mlp_ratio": v.mlp_ratio, "attentional_pool": True,
                       "attn_pooler_queries": c.attn_pooler_queries, "attn_pooler_heads": c.attn_pooler_heads,
                       "output_tokens": True},
        "text_cfg": {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width,
                     "heads": t.heads, "layers": t.layers, "mlp_ratio": t.mlp_ratio, "embed_cls": True,
                     "output_tokens": True, "pad_id": c.pad_id},
        "multimodal_cfg": {"context_length": m.context_length, "vocab_size": m.vocab_size, "width": m.width,
                           "heads": m.heads, "layers": m.layers, "mlp_ratio": m.mlp_ratio,
                           "attn_pooler_heads": c.attn_pooler_heads},
        "custom_text": True,
    }
    if c.activation == "quick_gelu":
        out["quick_gelu"] = True
    return out


def coca_from_openclip(sd: StateDict, d: dict[str, Any], source: str) -> CoCa:
    from clipforge.checkpoints.state_dict import load_strict

    model = CoCa(config_from_openclip_coca(d, source))
    load_strict(model, {k: v for k, v in sd.items() if not k.endswith("attn_mask")}, source)
    return model


def export_openclip_coca(model: CoCa, out_dir: str | Path, layout: str = "flat") -> Path:
    """Write a CoCa for open_clip (the layouts of :func:`clipforge.checkpoints.openclip.export_openclip`)."""
    if layout not in ("flat", "hub"):
        raise CheckpointError(f"open_clip layout must be 'flat' or 'hub', got {layout!r}")
    out = Path(out_dir)
    sd = dict(model.state_dict())
    cfg = config_to_openclip_coca(model.config)
    if layout == "flat":
        name = out.resolve().name
        atomic_save_safetensors(sd, out / f"{name}.safetensors")
        atomic_write_text(json.dumps(cfg, indent=2), out / f"{name}.json")
        return out
    atomic_save_safetensors(sd, out / "open_clip_model.safetensors")
    p = model.preprocess
    atomic_write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {
        "mean": list(p.mean), "std": list(p.std), "interpolation": p.interpolation, "resize_mode": "shortest"}},
        indent=2), out / "open_clip_config.json")
    return out
