"""OpenAI CLIP checkpoints: their state-dict layout, and the model config read off its shapes.

OpenAI's layout is the one clipforge's modules are named after, except that the text tower's
parameters sit at the top level (``transformer.*``, ``token_embedding.*``) where clipforge nests
them under ``text.``. open_clip keeps OpenAI's layout for its built-in (non-HF, non-timm) models.
"""

from __future__ import annotations

import re

from clipforge.checkpoints.state_dict import StateDict
from clipforge.errors import CheckpointError
from clipforge.models.config import CLIPConfig, ResNetConfig, TextConfig, ViTConfig

TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
# Entries OpenAI's TorchScript models carry beside the weights.
_NON_WEIGHTS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


def from_openai_layout(sd: StateDict) -> StateDict:
    """OpenAI/open_clip key names -> clipforge key names."""
    out: StateDict = {}
    for k, v in sd.items():
        if k in _NON_WEIGHTS or k.endswith(".attn_mask"):
            continue
        out[f"text.{k}" if k.startswith(TEXT_KEYS) else k] = v
    return out


def to_openai_layout(sd: StateDict) -> StateDict:
    """clipforge key names -> OpenAI/open_clip key names."""
    return {k[len("text.") :] if k.startswith("text.") else k: v for k, v in sd.items()}


def infer_config(sd: StateDict, activation: str = "quick_gelu") -> CLIPConfig:
    """Read a model config off the shapes of an OpenAI-layout state dict (OpenAI's build_model)."""
    try:
        if "visual.proj" in sd:
            width = sd["visual.conv1.weight"].shape[0]
            patch = sd["visual.conv1.weight"].shape[-1]
            layers = _count(sd, r"visual\.transformer\.resblocks\.(\d+)\.")
            grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            hidden = sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
            vision: ViTConfig | ResNetConfig = ViTConfig(
                image_size=patch * grid, patch_size=patch, width=width, layers=layers,
                head_width=64, mlp_ratio=hidden / width,
            )
        else:
            stages = tuple(_count(sd, rf"visual\.layer{i}\.(\d+)\.") for i in range(1, 5))
            width = sd["visual.layer1.0.conv1.weight"].shape[0]
            spatial = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
            vision = ResNetConfig(image_size=spatial * 32, layers=stages, width=width, head_width=64)
        text_width = sd["ln_final.weight"].shape[0]
        text = TextConfig(
            context_length=sd["positional_embedding"].shape[0],
            vocab_size=sd["token_embedding.weight"].shape[0],
            width=text_width,
            heads=text_width // 64,
            layers=_count(sd, r"transformer\.resblocks\.(\d+)\."),
            mlp_ratio=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / text_width,
        )
        return CLIPConfig(
            embed_dim=sd["text_projection"].shape[1], vision=vision, text=text, activation=activation
        )
    except KeyError as e:
        raise CheckpointError(
            f"cannot read a CLIP config off this state dict: key {e} is missing "
            "(is it an OpenAI/open_clip CLIP checkpoint?)"
        ) from None


def _count(sd: StateDict, pattern: str) -> int:
    rx = re.compile("^" + pattern)
    return len({m.group(1) for k in sd if (m := rx.match(k))})
