"""Prefix captioners: a CLIP embedding mapped to k prefix vectors of a causal language model.

One model, four training recipes (``method``):

* ``clipcap`` (Mokady et al. 2021): an MLP mapper, the LM fine-tuned with it, trained on CLIP
  *image* embeddings of image-caption pairs;
* ``clipcap-frozen``: a transformer mapper (the mapped embedding plus k learned constants through a
  transformer; the constants' outputs are the prefix), the LM frozen;
* ``capdec`` (Nukrai et al. 2022): trained on CLIP *text* embeddings of the captions alone, with
  Gaussian noise of standard deviation ``noise_std`` added to the (unit) embedding, so that at
  inference an image embedding, which lies elsewhere (the modality gap), falls inside what was seen;
* ``decap`` (Li et al. 2023): trained on text embeddings alone, and at inference the image
  embedding v is projected onto a memory M of caption text embeddings:
  w = softmax(v M^T / tau), input = normalise(w M).

Loss: L = -sum_i sum_j log p(c_j | p_1..p_k, c_<j) over the caption's tokens (padding excluded).
The CLIP is not part of this model: the captioner records which CLIP it reads (path and weight
fingerprint) and is given that CLIP's embeddings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.captioning.hf_lm import HFLMConfig
from clipforge.captioning.lm import IGNORE, LMConfig, build_lm, caption_labels
from clipforge.config import StoredConfig
from clipforge.errors import ConfigError
from clipforge.models.clip_linked import ClipLinked
from clipforge.models.generation import GenerationConfig, KVCache, fit_to, generate
from clipforge.models.transformer import Transformer

Method = Literal["clipcap", "clipcap-frozen", "capdec", "decap"]
METHODS: tuple[str, ...] = ("clipcap", "clipcap-frozen", "capdec", "decap")


@dataclass(frozen=True)
class PrefixConfig(StoredConfig):
    method: Method = "clipcap"
    clip_dim: int = 512
    prefix_length: int = 10
    mapper_layers: int = 4  # transformer mapper only
    mapper_heads: int = 8
    noise_std: float = 0.0  # capdec: chosen from the measured modality gap (recorded in noise_choice)
    noise_choice: str = ""
    decap_tau: float = 0.01
    memory_size: int = 0  # decap: caption embeddings in the memory
    lm: LMConfig | HFLMConfig = field(default_factory=LMConfig)
    start_id: int = 0
    end_id: int = 0
    pad_id: int = 0
    clip_path: str = ""
    clip_fingerprint: str = ""

    def __post_init__(self) -> None:
        if self.prefix_length < 1:
            raise ConfigError(f"prefix_length must be at least 1, got {self.prefix_length}")

    @property
    def text_only(self) -> bool:
        return self.method in ("capdec", "decap")



class MLPMapper(nn.Module):
    """ClipCap's MLP: clip_dim -> (k * width) / 2 -> k * width, tanh between."""

    def __init__(self, clip_dim: int, width: int, k: int) -> None:
        super().__init__()
        self.k, self.width = k, width
        self.mlp = nn.Sequential(nn.Linear(clip_dim, k * width // 2), nn.Tanh(), nn.Linear(k * width // 2, k * width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x).view(x.shape[0], self.k, self.width)


class TransformerMapper(nn.Module):
    """ClipCap's transformer mapper: the embedding as k vectors plus k learned constants, through a
    transformer; the constants' outputs are the prefix."""

    def __init__(self, clip_dim: int, width: int, k: int, layers: int, heads: int) -> None:
        super().__init__()
        self.k, self.width = k, width
        self.linear = nn.Linear(clip_dim, k * width)
        self.constants = nn.Parameter(torch.randn(k, width) * 0.02)
        self.transformer = Transformer(width, layers, heads)
        self.transformer.init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mapped = self.linear(x).view(x.shape[0], self.k, self.width)
        seq = torch.cat([mapped, self.constants.expand(x.shape[0], -1, -1)], dim=1)
        return self.transformer(seq)[:, self.k :]


class PrefixCaptioner(ClipLinked):
    """Mapper + causal LM (see the module docstring); saved as arch ``prefix_captioner``."""

    arch = "prefix_captioner"

    def __init__(self, config: PrefixConfig, lm: nn.Module | None = None) -> None:
        """``lm``: a language model already built (a Hugging Face one with its pretrained weights);
        by default it is built from ``config.lm``."""
        super().__init__()
        self.config = config
        self.lm = lm if lm is not None else build_lm(config.lm)
        width, k = self.lm.width, config.prefix_length
        if config.method == "clipcap-frozen" and width % config.mapper_heads:
            raise ConfigError(f"the language model's width {width} is not a multiple of mapper_heads="
                              f"{config.mapper_heads}")
        if config.method == "clipcap-frozen":
            self.mapper: nn.Module = TransformerMapper(config.clip_dim, width, k, config.mapper_layers,
                                                       config.mapper_heads)
        else:
            self.mapper = MLPMapper(config.clip_dim, width, k)
        # DeCap's memory of caption text embeddings (filled when trained; saved with the model).
        self.register_buffer("memory", torch.zeros(config.memory_size, config.clip_dim))

    @torch.no_grad()
    def generate(self, images: torch.Tensor, config: GenerationConfig | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Captions of preprocessed ``images``: ``ids`` and the CLIP's normalised ``image_features``."""
        feats = self.image_features(images)
        ids = self.generate_from_embeddings(feats.to(next(self.parameters()).device), config, use_cache, generator)
        return {"ids": ids, "image_features": feats}

    def condition(self, embeddings: torch.Tensor, train: bool = False,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """What the mapper reads: the unit embedding, with CapDec's noise in training, or (DeCap, at
        inference) its projection onto the memory."""
        e = F.normalize(embeddings.float(), dim=-1)
        if train and self.config.method == "capdec" and self.config.noise_std > 0:
            noise = torch.randn(e.shape, generator=generator, device=e.device) if generator is not None \
                else torch.randn_like(e)
            e = e + noise * self.config.noise_std
        if not train and self.config.method == "decap":
            if not len(self.memory):
                raise ConfigError("this DeCap captioner has an empty memory (it was not trained)")
            w = torch.softmax(e @ self.memory.T / self.config.decap_tau, dim=-1)
            e = F.normalize(w @ self.memory, dim=-1)
        return e.to(next(self.mapper.parameters()).dtype)

    def forward(self, embeddings: torch.Tensor, tokens: torch.Tensor, train: bool = True) -> dict[str, torch.Tensor]:
        """Teacher-forced ``logits`` [B, L-1, vocab] after the prefix, and their ``labels`` (the next
        tokens, :data:`~clipforge.captioning.lm.IGNORE` after the end token)."""
        prefix = self.mapper(self.condition(embeddings, train=train))
        x = torch.cat([prefix, self.lm.embed(tokens[:, :-1])], dim=1)
        logits = self.lm(x)[:, self.config.prefix_length :]
        return {"logits": logits, "labels": caption_labels(tokens, self.config.end_id)}

    def caption_loss(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        flat = logits.reshape(-1, logits.shape[-1])
        return F.cross_entropy(flat if flat.dtype == torch.float64 else flat.float(), labels.reshape(-1),
                               ignore_index=IGNORE, reduction=reduction)

    @torch.no_grad()
    def generate_from_embeddings(self, embeddings: torch.Tensor, config: GenerationConfig | None = None,
                                 use_cache: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        """Caption ids [N, <= 1 + max_len] (start token first) for CLIP embeddings [N, clip_dim]."""
        cfg = config or GenerationConfig()
        n = embeddings.shape[0]
        beams = cfg.num_beams if cfg.strategy == "beam" else 1
        prefix = self.mapper(self.condition(embeddings)).repeat_interleave(beams, dim=0)
        room = self.config.lm.context_length - self.config.prefix_length - 1
        cfg = fit_to(cfg, room)
        prompt = torch.full((n, 1), self.config.start_id, dtype=torch.long, device=embeddings.device)

        def step(new: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
            if cache is None:  # the whole sequence again, prefix first
                return self.lm(torch.cat([prefix, self.lm.embed(new)], dim=1))[:, -1]
            x = self.lm.embed(new)
            if cache.length == 0:
                x = torch.cat([prefix, x], dim=1)
            return self.lm(x, cache)[:, -1]

        return generate(step, prompt, eos=self.config.end_id, pad=self.config.pad_id, config=cfg,
                        use_cache=use_cache, generator=generator)


def modality_gap(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> dict[str, float]:
    """The distance between paired unit image and text embeddings: its mean (the gap CapDec's noise
    must cover) and the per-dimension std of the differences."""
    i, t = F.normalize(image_embeddings.float(), dim=-1), F.normalize(text_embeddings.float(), dim=-1)
    diff = i - t
    return {"mean_distance": float(diff.norm(dim=-1).mean()), "per_dim_std": float(diff.std(dim=0).mean()),
            "centroid_distance": float((i.mean(0) - t.mean(0)).norm()), "dim": i.shape[1]}


def capdec_noise(gap: dict[str, float]) -> tuple[float, str]:
    """The noise std for CapDec: isotropic noise of std s moves a d-dim unit vector by s * sqrt(d) on
    average; s is chosen so that this equals the measured mean image-text distance."""
    s = gap["mean_distance"] / math.sqrt(gap["dim"])
    return s, (f"std {s:.4f}: isotropic noise moves a unit embedding by std * sqrt(d) = the mean paired image-text "
               f"distance {gap['mean_distance']:.3f} measured on the training pairs (d={gap['dim']})")
