"""A Hugging Face causal language model folder (GPT-2 layout) as a captioner's language model.

ClipCap and CapDec decode with a pretrained GPT-2; any such folder (``config.json``,
``model.safetensors`` and its tokenizer) plugs in here with :class:`CausalLM`'s interface:
``embed(ids)``, ``forward(embeds, cache) -> logits`` and ``width``. The Hugging Face key/value
cache rides in the shared :class:`~clipforge.models.generation.KVCache`, which reorders it when
beams move. The folder's ``config.json`` is kept in the captioner's config, so a saved captioner
rebuilds the model without the folder (its weights are in the captioner's own file).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from clipforge.errors import ConfigError
from clipforge.models.generation import KVCache


@dataclass(frozen=True)
class HFLMConfig:
    """Attributes: the folder's ``config.json`` (``hf_config``), the positions a captioner uses
    (prefix and caption, ``context_length``) and where the weights first came from (``source``)."""

    type: Literal["hf"] = "hf"
    hf_config: dict[str, Any] = field(default_factory=dict)
    context_length: int = 0
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError("a Hugging Face language model needs transformers: pip install 'clipforge[hf]'") from None
    return transformers


class HFCausalLM(nn.Module):
    """A ``transformers`` causal LM behind :class:`~clipforge.captioning.lm.CausalLM`'s interface."""

    def __init__(self, config: HFLMConfig, model: nn.Module | None = None) -> None:
        super().__init__()
        transformers = _require_transformers()
        self.config = config
        if model is None:  # rebuilt from the saved config; weights come with the captioner
            d = dict(config.hf_config)
            hf_config = transformers.AutoConfig.for_model(d.pop("model_type"), **d)
            model = transformers.AutoModelForCausalLM.from_config(hf_config)
        self.model = model
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @classmethod
    def from_folder(cls, folder: str | Path, context_length: int) -> HFCausalLM:
        """The model of a Hugging Face folder; its weights are read from safetensors only."""
        transformers = _require_transformers()
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ConfigError(f"lm.hf={folder}: no config.json (expected a Hugging Face causal LM folder)")
        if not list(folder.glob("*.safetensors")):
            raise ConfigError(f"lm.hf={folder}: no .safetensors weights (clipforge does not unpickle .bin files; "
                              "convert them with transformers' save_pretrained(safe_serialization=True))")
        hf_config = json.loads((folder / "config.json").read_text())
        limit = hf_config.get("n_positions", hf_config.get("max_position_embeddings", context_length))
        if context_length > limit:
            raise ConfigError(f"lm.hf={folder}: the prefix and caption take {context_length} positions, "
                              f"the model has {limit}")
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), use_safetensors=True,
                                                                      local_files_only=True)
        except (OSError, ValueError) as e:
            raise ConfigError(f"lm.hf={folder}: cannot load it as a causal LM ({str(e).splitlines()[0]})") from None
        config = HFLMConfig(hf_config=model.config.to_dict(), context_length=context_length,
                            source=str(folder.resolve()))
        return cls(config, model)

    @property
    def width(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    @property
    def vocab_size(self) -> int:
        return self.model.get_input_embeddings().num_embeddings

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    def forward(self, embeds: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Next-token logits [B, T, vocab] for input embeddings [B, T, width] (after ``cache``'s positions)."""
        return self.forward_hidden(embeds, cache, hidden=False)[0]

    def forward_hidden(self, embeds: torch.Tensor, cache: KVCache | None = None,
                       hidden: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The logits and the last layer's hidden states [B, T, width] (what the output head reads)."""
        kwargs = {self._cache_arg: cache.external, "use_cache": True} if cache is not None else {"use_cache": False}
        out = self.model(inputs_embeds=embeds, output_hidden_states=hidden, **kwargs)
        if cache is not None:
            cache.external = getattr(out, self._cache_arg)
            cache.length += embeds.shape[1]
        return out.logits, out.hidden_states[-1] if hidden else None
