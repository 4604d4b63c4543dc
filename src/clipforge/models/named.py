"""Named model configurations.

The full-size family has OpenAI's exact shapes and open_clip's names and activations: ``ViT-B-32``
is GELU (as open_clip's ``ViT-B-32.json``, used by the LAION-trained weights) and
``ViT-B-32-quickgelu`` is QuickGELU (OpenAI's released weights need it). OpenAI's own spelling
(``ViT-B/32``) names OpenAI's model, so it means the QuickGELU config. The ``tiny-*`` and
``small-*`` configs train on a CPU in minutes on 32x32 or 64x64 images.
"""

from __future__ import annotations

from dataclasses import replace

from clipforge.errors import ConfigError
from clipforge.models.coca import CoCaConfig, DecoderConfig
from clipforge.models.config import CLIPConfig, ResNetConfig, TextConfig, ViTConfig


def _openai_text(width: int, heads: int) -> TextConfig:
    return TextConfig(context_length=77, vocab_size=49408, width=width, heads=heads, layers=12)


def _resnet(layers: tuple[int, int, int, int], width: int, size: int, embed: int, text_w: int) -> CLIPConfig:
    return CLIPConfig(
        embed_dim=embed,
        vision=ResNetConfig(image_size=size, layers=layers, width=width),
        text=_openai_text(text_w, text_w // 64),
        activation="gelu",
    )


def _vit(size: int, patch: int, width: int, layers: int, embed: int, text_w: int) -> CLIPConfig:
    return CLIPConfig(
        embed_dim=embed,
        vision=ViTConfig(image_size=size, patch_size=patch, width=width, layers=layers),
        text=_openai_text(text_w, text_w // 64),
        activation="gelu",
    )


def _with_quickgelu(configs: dict[str, CLIPConfig]) -> dict[str, CLIPConfig]:
    """Each config under its own name (GELU) and under ``NAME-quickgelu`` (QuickGELU), as open_clip names them."""
    out: dict[str, CLIPConfig] = {}
    for name, cfg in configs.items():
        out[name] = cfg
        out[f"{name}-quickgelu"] = replace(cfg, activation="quick_gelu")
    return out


def _small_text(vocab: int = 49408, context: int = 77, width: int = 128, layers: int = 3) -> TextConfig:
    return TextConfig(context_length=context, vocab_size=vocab, width=width, heads=4, layers=layers)


NAMED_CONFIGS: dict[str, CLIPConfig] = {
    **_with_quickgelu({
        "RN50": _resnet((3, 4, 6, 3), 64, 224, 1024, 512),
        "RN101": _resnet((3, 4, 23, 3), 64, 224, 512, 512),
        "RN50x4": _resnet((4, 6, 10, 6), 80, 288, 640, 640),
        "RN50x16": _resnet((6, 8, 18, 8), 96, 384, 768, 768),
        "RN50x64": _resnet((3, 15, 36, 10), 128, 448, 1024, 1024),
        "ViT-B-32": _vit(224, 32, 768, 12, 512, 512),
        "ViT-B-16": _vit(224, 16, 768, 12, 512, 512),
        "ViT-L-14": _vit(224, 14, 1024, 24, 768, 768),
        "ViT-L-14-336": _vit(336, 14, 1024, 24, 768, 768),
    }),
    # Small configs for CPU training. Text towers keep a 77-token context and the OpenAI
    # vocabulary so the bundled BPE tokenizer works with them out of the box.
    "tiny-vit-32": CLIPConfig(
        embed_dim=128,
        vision=ViTConfig(image_size=32, patch_size=4, width=128, layers=3, head_width=32),
        text=_small_text(),
        activation="gelu",
    ),
    "small-vit-64": CLIPConfig(
        embed_dim=256,
        vision=ViTConfig(image_size=64, patch_size=8, width=256, layers=6, head_width=64),
        text=_small_text(width=256, layers=4),
        activation="gelu",
    ),
    "tiny-rn-64": CLIPConfig(
        embed_dim=128,
        vision=ResNetConfig(image_size=64, layers=(1, 1, 1, 1), width=32, head_width=32),
        text=_small_text(),
        activation="gelu",
    ),
}

def _coca(embed: int, vision: ViTConfig, text_width: int, text_heads: int, layers: int, queries: int = 256,
          pool_heads: int = 8, context: int = 76) -> CoCaConfig:
    return CoCaConfig(
        embed_dim=embed, vision=vision,
        text=TextConfig(context_length=context, vocab_size=49408, width=text_width, heads=text_heads, layers=layers),
        decoder=DecoderConfig(width=text_width, layers=layers, heads=text_heads, context_length=context),
        attn_pooler_queries=queries, attn_pooler_heads=pool_heads, activation="gelu",
    )


# Contrastive captioners (open_clip's names and shapes; a small one for CPU training). Their
# vocabulary and context follow the tokenizer when trained with ``clipforge train``.
COCA_CONFIGS: dict[str, CoCaConfig] = {
    "coca_ViT-B-32": _coca(512, ViTConfig(image_size=224, patch_size=32, width=768, layers=12), 512, 8, 12),
    "coca_ViT-L-14": _coca(768, ViTConfig(image_size=224, patch_size=14, width=1024, layers=24), 768, 12, 12),
    "coca-tiny": _coca(128, ViTConfig(image_size=64, patch_size=8, width=128, layers=3, head_width=32), 128, 4, 3,
                       queries=32, pool_heads=4, context=77),
}

# OpenAI's spellings name OpenAI's (QuickGELU) models.
_ALIASES = {
    "ViT-B/32": "ViT-B-32-quickgelu",
    "ViT-B/16": "ViT-B-16-quickgelu",
    "ViT-L/14": "ViT-L-14-quickgelu",
    "ViT-L/14@336px": "ViT-L-14-336-quickgelu",
}


def list_configs() -> list[str]:
    return [*NAMED_CONFIGS, *COCA_CONFIGS]


def get_config(name: str) -> CLIPConfig | CoCaConfig:
    """The named config (open_clip or OpenAI spelling): a CLIP's, or a CoCa's for the ``coca`` names."""
    key = _ALIASES.get(name, name)
    if key in COCA_CONFIGS:
        return COCA_CONFIGS[key]
    if key not in NAMED_CONFIGS:
        raise ConfigError(f"unknown model config {name!r}; known: {', '.join(list_configs())}")
    return NAMED_CONFIGS[key]
