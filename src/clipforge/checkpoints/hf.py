"""Hugging Face ``CLIPModel`` folders (``config.json`` + ``model.safetensors``).

Only the ViT image tower exists in transformers' CLIP. The attention projections are separate
``q_proj``/``k_proj``/``v_proj`` there and one packed ``in_proj_weight`` here; projections are
``nn.Linear`` weights there ([out, in]) and matrices applied on the right here ([in, out]).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from clipforge.checkpoints.state_dict import StateDict, atomic_save_safetensors, atomic_write_text
from clipforge.errors import CheckpointError
from clipforge.models.clip import CLIP
from clipforge.models.config import CLIPConfig, TextConfig, ViTConfig

_ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu"}
_LAYER_RENAMES = {
    "layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def is_hf_config(d: dict[str, Any]) -> bool:
    return d.get("model_type") == "clip" or "CLIPModel" in d.get("architectures", [])


def config_from_hf(d: dict[str, Any], source: str = "config.json") -> CLIPConfig:
    """A transformers ``CLIPConfig`` dict -> :class:`CLIPConfig`."""
    t, v = d.get("text_config") or {}, d.get("vision_config") or {}
    acts = {t.get("hidden_act", "quick_gelu"), v.get("hidden_act", "quick_gelu")}
    if len(acts) != 1 or not acts <= set(_ACTS):
        raise CheckpointError(
            f"{source}: hidden_act {sorted(acts)} is not supported; clipforge needs the same "
            "'gelu' or 'quick_gelu' in both towers"
        )
    for name, sub in (("text_config", t), ("vision_config", v)):
        eps = sub.get("layer_norm_eps", 1e-5)
        if not math.isclose(eps, 1e-5):
            raise CheckpointError(f"{source}: {name}.layer_norm_eps={eps} is not supported (1e-5)")
    vocab = t.get("vocab_size", 49408)
    eos = t.get("eos_token_id", 2)
    # transformers pools at the first eos token, or at the argmax id for the legacy eos id 2;
    # both equal clipforge's argmax pooling only when eos is the highest id.
    if eos not in (2, vocab - 1):
        raise CheckpointError(
            f"{source}: text_config.eos_token_id={eos} is not the highest token id ({vocab - 1}); "
            "clipforge pools text at the highest id"
        )
    tw, vw = t.get("hidden_size", 512), v.get("hidden_size", 768)
    return CLIPConfig(
        embed_dim=d.get("projection_dim", 512),
        vision=ViTConfig(
            image_size=v.get("image_size", 224), patch_size=v.get("patch_size", 32), width=vw,
            layers=v.get("num_hidden_layers", 12), head_width=vw // v.get("num_attention_heads", 12),
            mlp_ratio=v.get("intermediate_size", 3072) / vw,
        ),
        text=TextConfig(
            context_length=t.get("max_position_embeddings", 77), vocab_size=vocab, width=tw,
            heads=t.get("num_attention_heads", 8), layers=t.get("num_hidden_layers", 12),
            mlp_ratio=t.get("intermediate_size", 2048) / tw,
        ),
        activation=_ACTS[acts.pop()],
    )


def state_dict_from_hf(sd: StateDict) -> StateDict:
    """transformers CLIPModel keys -> clipforge keys."""
    out: StateDict = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key.endswith("position_ids"):
            continue
        m = re.match(r"(text_model|vision_model)\.encoder\.layers\.(\d+)\.(.+)$", key)
        if m:
            tower, idx, rest = m.groups()
            prefix = f"{'text' if tower == 'text_model' else 'visual'}.transformer.resblocks.{idx}."
            pm = re.match(r"self_attn\.(q|k|v)_proj\.(weight|bias)$", rest)
            if pm:
                qkv.setdefault(f"{prefix}attn.in_proj_{pm.group(2)}", {})[pm.group(1)] = value
                continue
            for old, new in _LAYER_RENAMES.items():
                if rest.startswith(old + "."):
                    rest = new + rest[len(old) :]
                    break
            out[prefix + rest] = value
            continue
        if key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()
        else:
            # Unknown keys pass through so the strict load reports them as unexpected.
            out[_TOP.get(key, key)] = value
    for key, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"attention projections incomplete for {key}: found {sorted(parts)}")
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


_TOP = {
    "text_model.embeddings.token_embedding.weight": "text.token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "text.positional_embedding",
    "text_model.final_layer_norm.weight": "text.ln_final.weight",
    "text_model.final_layer_norm.bias": "text.ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = {"text_projection.weight": "text.text_projection", "visual_projection.weight": "visual.proj"}


def state_dict_to_hf(sd: StateDict) -> StateDict:
    """clipforge keys -> transformers CLIPModel keys."""
    inverse_top = {v: k for k, v in _TOP.items()}
    inverse_t = {v: k for k, v in _TRANSPOSED.items()}
    out: StateDict = {}
    for key, value in sd.items():
        m = re.match(r"(text|visual)\.transformer\.resblocks\.(\d+)\.(.+)$", key)
        if m:
            tower, idx, rest = m.groups()
            prefix = f"{'text_model' if tower == 'text' else 'vision_model'}.encoder.layers.{idx}."
            pm = re.match(r"attn\.in_proj_(weight|bias)$", rest)
            if pm:
                for name, part in zip("qkv", value.chunk(3, dim=0)):
                    out[f"{prefix}self_attn.{name}_proj.{pm.group(1)}"] = part.contiguous()
                continue
            for old, new in _LAYER_RENAMES.items():
                if rest.startswith(new + "."):
                    rest = old + rest[len(new) :]
                    break
            out[prefix + rest] = value
        elif key in inverse_t:
            out[inverse_t[key]] = value.t().contiguous()
        elif key in inverse_top:
            out[inverse_top[key]] = value
        else:
            raise CheckpointError(f"no Hugging Face CLIPModel name for parameter {key!r}")
    return out


def config_to_hf(config: CLIPConfig, bos_token_id: int, eos_token_id: int) -> dict[str, Any]:
    if not isinstance(config.vision, ViTConfig):
        raise CheckpointError(
            "Hugging Face CLIPModel has no ResNet image tower; export this model to open_clip instead"
        )
    v, t = config.vision, config.text
    act = config.activation
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": config.embed_dim,
        "logit_scale_init_value": config.init_logit_scale,
        "text_config": {
            "model_type": "clip_text_model", "hidden_act": act, "hidden_size": t.width,
            "intermediate_size": int(t.width * t.mlp_ratio), "num_attention_heads": t.heads,
            "num_hidden_layers": t.layers, "max_position_embeddings": t.context_length,
            "vocab_size": t.vocab_size, "layer_norm_eps": 1e-5, "bos_token_id": bos_token_id,
            "eos_token_id": eos_token_id, "pad_token_id": 0, "projection_dim": config.embed_dim,
        },
        "vision_config": {
            "model_type": "clip_vision_model", "hidden_act": act, "hidden_size": v.width,
            "intermediate_size": int(v.width * v.mlp_ratio), "num_attention_heads": v.heads,
            "num_hidden_layers": v.layers, "image_size": v.image_size, "patch_size": v.patch_size,
            "num_channels": 3, "layer_norm_eps": 1e-5, "projection_dim": config.embed_dim,
        },
    }


def export_hf(model: CLIP, out_dir: str | Path) -> Path:
    """Write a folder that ``transformers.CLIPModel.from_pretrained`` reads."""
    out = Path(out_dir)
    if model.config.init_logit_bias is not None:
        raise CheckpointError("a SigLIP-trained model (with logit_bias) has no Hugging Face CLIPModel form; "
                              "convert it --to open_clip or keep clipforge's format")
    vocab = model.config.text.vocab_size
    cfg = config_to_hf(model.config, bos_token_id=vocab - 2, eos_token_id=vocab - 1)
    atomic_save_safetensors(state_dict_to_hf(model.state_dict()), out / "model.safetensors",
                            metadata={"format": "pt"})
    atomic_write_text(json.dumps(cfg, indent=2), out / "config.json")
    p = model.preprocess
    pre = {"image_processor_type": "CLIPImageProcessor", "do_resize": True,
           "size": {"shortest_edge": p.image_size}, "do_center_crop": True,
           "crop_size": {"height": p.image_size, "width": p.image_size}, "do_normalize": True,
           "image_mean": list(p.mean), "image_std": list(p.std), "resample": 3,
           "do_convert_rgb": True, "do_rescale": True, "rescale_factor": 1 / 255}
    atomic_write_text(json.dumps(pre, indent=2), out / "preprocessor_config.json")
    return out
