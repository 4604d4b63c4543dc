"""Building the towers from a config, in one place (the CLIP model, SSL encoders and the tasks to come)."""

from __future__ import annotations

from torch import nn

from clipforge.models.config import CLIPConfig, HFTextConfig, ResNetConfig


def build_image_tower(config: CLIPConfig) -> nn.Module:
    """The image tower ``config.vision`` describes, projecting to ``config.embed_dim``."""
    if isinstance(config.vision, ResNetConfig):
        from clipforge.models.resnet import ModifiedResNet

        return ModifiedResNet(config.vision, config.embed_dim)
    from clipforge.models.vit import VisionTransformer

    return VisionTransformer(config.vision, config.embed_dim, config.activation)


def build_text_tower(config: CLIPConfig) -> nn.Module:
    """The text tower ``config.text`` describes (clipforge's transformer or a Hugging Face encoder)."""
    if isinstance(config.text, HFTextConfig):
        from clipforge.models.hf_text import HFTextTower

        return HFTextTower(config.text, config.embed_dim)
    from clipforge.models.text import TextTransformer

    return TextTransformer(config.text, config.embed_dim, config.activation)
