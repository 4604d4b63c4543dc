"""CLIP models: configs, towers and the two-tower model."""

from clipforge.models.clip import CLIP
from clipforge.models.config import CLIPConfig, ResNetConfig, TextConfig, ViTConfig
from clipforge.models.named import get_config, list_configs

__all__ = ["CLIP", "CLIPConfig", "ResNetConfig", "TextConfig", "ViTConfig", "get_config", "list_configs"]
