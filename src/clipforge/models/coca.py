"""CoCa, the contrastive captioner (Yu et al. 2022), in open_clip's layout.

One model, two outputs: a CLIP (image and text embeddings in one space) and a captioner.

* Image tower: a ViT whose patch tokens go through an *attentional pooler* (learned queries
  cross-attending to the tokens, open_clip's original CoCa setup): the first output token,
  normalised and projected, is the contrastive image embedding; the others are what the decoder
  reads.
* Unimodal text tower: a causal transformer over the caption with a learned CLS embedding appended
  at the end; the CLS output (layer-normed, projected) is the text embedding; the token outputs
  feed the decoder. Padding keys are masked out as open_clip masks them (its legacy mask puts the
  CLS key first, so every key is shifted by one; kept so its checkpoints compute the same numbers).
* Multimodal decoder: alternating causal self-attention and cross-attention to the image tokens,
  then a projection to the vocabulary: the next-token logits.

Loss (paper): ``contrastive_weight * CLIP loss + caption_weight * next-token cross-entropy``
(1 and 2). Parameter names are open_clip's, so its CoCa state dicts load unchanged.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.config import StoredConfig
from clipforge.errors import ConfigError
from clipforge.images.preprocess import Preprocess
from clipforge.models.clip import TwoTowers
from clipforge.models.config import Activation, TextConfig, ViTConfig
from clipforge.models.generation import GenerationConfig, KVCache, fit_to, generate
from clipforge.models.transformer import ResidualBlock, SelfAttention, Transformer, init_blocks
from clipforge.models.vit import VisionTransformer


@dataclass(frozen=True)
class DecoderConfig:
    """The multimodal text decoder. Attributes: token width, blocks (each a self- and a cross-
    attention block), heads, MLP ratio, positions, and the vocabulary it predicts."""

    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_ratio: float = 4.0
    context_length: int = 76
    vocab_size: int = 49408

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ConfigError(f"decoder.width={self.width} is not a multiple of decoder.heads={self.heads}")


@dataclass(frozen=True)
class CoCaConfig(StoredConfig):
    """A whole CoCa. ``pad_id``/``start_id``/``end_id`` are the tokenizer's; the loss weights are the
    paper's (contrastive 1, captioning 2)."""

    embed_dim: int = 512
    vision: ViTConfig = field(default_factory=ViTConfig)
    text: TextConfig = field(default_factory=TextConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    attn_pooler_queries: int = 256
    attn_pooler_heads: int = 8
    activation: Activation = "gelu"
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = 100.0
    pad_id: int = 0
    start_id: int = 49406
    end_id: int = 49407
    contrastive_weight: float = 1.0
    caption_weight: float = 2.0

    def __post_init__(self) -> None:
        if self.decoder.width != self.embed_dim:
            raise ConfigError(f"decoder.width={self.decoder.width} must equal embed_dim={self.embed_dim}: the "
                              "decoder cross-attends to the pooled image tokens, which have embed_dim channels")
        if self.text.width != self.decoder.width:
            raise ConfigError(f"text.width={self.text.width} must equal decoder.width={self.decoder.width}: the "
                              "decoder reads the text tower's token states")
        if self.embed_dim % self.attn_pooler_heads:
            raise ConfigError(f"embed_dim={self.embed_dim} is not a multiple of attn_pooler_heads")


    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


class AttentionalPooler(nn.Module):
    """``n_queries`` learned queries cross-attending to the tokens (after layer norms on both sides)."""

    def __init__(self, d_model: int, context_dim: int, heads: int, n_queries: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.attn = SelfAttention(d_model, heads, context_width=context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_k = nn.LayerNorm(context_dim)
        # nn.MultiheadAttention's initialisation (open_clip's pooler is one).
        for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
            if hasattr(self.attn, name):
                nn.init.xavier_uniform_(getattr(self.attn, name))
        nn.init.zeros_(self.attn.in_proj_bias)
        nn.init.zeros_(self.attn.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.ln_q(self.query).unsqueeze(0).expand(x.shape[0], -1, -1)
        return self.attn(q, context=self.ln_k(x))


class CoCaVisionTower(VisionTransformer):
    """A ViT trunk, then the attentional pooler, a layer norm, and the first pooled token projected."""

    def __init__(self, config: CoCaConfig) -> None:
        super().__init__(config.vision, config.embed_dim, config.activation)
        d = config.embed_dim
        self.attn_pool = AttentionalPooler(d, config.vision.width, config.attn_pooler_heads,
                                           config.attn_pooler_queries)
        self.ln_post = nn.LayerNorm(d)  # over the pooled tokens (embed_dim), not the trunk's width
        self.proj = nn.Parameter(torch.randn(d, d) * config.vision.width**-0.5)

    def forward_tokens(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.ln_post(self.attn_pool(self._trunk(images)))
        return {"pooled": x[:, 0] @ self.proj, "tokens": x[:, 1:]}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(images)["pooled"]


class CoCaTextTower(nn.Module):
    """The unimodal text tower: causal, a CLS embedding appended, pooled at the CLS."""

    def __init__(self, config: CoCaConfig) -> None:
        super().__init__()
        t = config.text
        self.config, self.pad_id = t, config.pad_id
        self.token_embedding = nn.Embedding(t.vocab_size, t.width)
        self.cls_emb = nn.Parameter(torch.empty(t.width))
        self.positional_embedding = nn.Parameter(torch.empty(t.context_length + 1, t.width))
        self.transformer = Transformer(t.width, t.layers, t.heads, t.mlp_ratio, config.activation)
        self.ln_final = nn.LayerNorm(t.width)
        self.text_projection = nn.Parameter(torch.empty(t.width, config.embed_dim))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.cls_emb, std=0.01)
        nn.init.normal_(self.text_projection, std=t.width**-0.5)
        self.transformer.init_weights()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable

    def _mask(self, tokens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        n, length = tokens.shape[0], tokens.shape[1] + 1
        causal = torch.full((length, length), float("-inf"), device=tokens.device, dtype=dtype).triu_(1)
        valid = torch.cat([tokens.new_ones(n, 1, dtype=torch.bool), tokens != self.pad_id], dim=1)  # open_clip's order
        pad = torch.zeros(n, 1, 1, length, device=tokens.device, dtype=dtype)
        pad.masked_fill_(~valid[:, None, None], float("-inf"))
        return causal + pad

    def forward_tokens(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """``pooled`` [N, embed_dim] (the CLS output), ``tokens`` [N, L, width] (unnormalised, as the
        decoder reads them)."""
        n, length = tokens.shape
        if length > self.config.context_length:
            raise ValueError(f"text has {length} tokens but the model's context length is {self.config.context_length}")
        cls = self.cls_emb.to(self.token_embedding.weight.dtype).expand(n, 1, -1)
        x = torch.cat([self.token_embedding(tokens), cls], dim=1)
        x = x + self.positional_embedding[: length + 1].to(x.dtype)
        x = self.transformer(x, mask=self._mask(tokens, x.dtype))
        return {"pooled": self.ln_final(x[:, -1]) @ self.text_projection, "tokens": x[:, :-1]}

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(tokens)["pooled"]

    def step(self, new: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Token outputs of ``new`` [B, T] continuing the cached positions (no padding, no CLS: what
        decoding needs, and equal to :meth:`forward_tokens`'s ``tokens`` there)."""
        start = cache.length
        x = self.token_embedding(new) + self.positional_embedding[start : start + new.shape[1]].to(
            self.token_embedding.weight.dtype)
        return self.transformer(x, causal=True, cache=cache, prefix="text.")


class MultimodalDecoder(nn.Module):
    """Causal self-attention blocks interleaved with cross-attention blocks over the image tokens."""

    def __init__(self, config: CoCaConfig) -> None:
        super().__init__()
        d = config.decoder
        self.config = d
        self.grad_checkpointing = False
        self.resblocks = nn.ModuleList(ResidualBlock(d.width, d.heads, d.mlp_ratio, config.activation)
                                       for _ in range(d.layers))
        self.cross_attn = nn.ModuleList(ResidualBlock(d.width, d.heads, d.mlp_ratio, config.activation, cross=True)
                                        for _ in range(d.layers))
        self.ln_final = nn.LayerNorm(d.width)
        self.text_projection = nn.Parameter(torch.empty(d.width, d.vocab_size))
        init_blocks(self.resblocks, d.width)
        init_blocks(self.cross_attn, d.width)
        nn.init.normal_(self.text_projection, std=d.width**-0.5)

    def forward(self, image_tokens: torch.Tensor, text_tokens: torch.Tensor,
                cache: KVCache | None = None) -> torch.Tensor:
        """Next-token logits [N, L, vocab] for text token states [N, L, width]."""
        if text_tokens.shape[1] + (cache.length if cache is not None else 0) > self.config.context_length:
            raise ValueError(f"the decoder reads at most {self.config.context_length} tokens")
        x = text_tokens
        for i, (self_block, cross_block) in enumerate(zip(self.resblocks, self.cross_attn)):
            x = self_block(x, causal=True, cache=cache, name=f"dec.{i}")
            x = cross_block(x, context=image_tokens, cache=cache, name=f"cross.{i}")
        return self.ln_final(x) @ self.text_projection


class CoCa(TwoTowers):
    """Image tower, unimodal text tower, multimodal decoder and a temperature (see the module docstring).

    As a CLIP it has ``encode_image``/``encode_text``, ``tokenizer``, ``preprocess`` and ``config.embed_dim``,
    so zero-shot classification, retrieval and search use it unchanged.
    """

    arch = "coca"

    def __init__(self, config: CoCaConfig) -> None:
        super().__init__()
        self.config = config
        self.visual = CoCaVisionTower(config)
        self.text = CoCaTextTower(config)
        self.text_decoder = MultimodalDecoder(config)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        self.tokenizer: Any = None
        self.preprocess = Preprocess(image_size=config.vision.image_size)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised ``image_features`` and ``text_features``, ``logit_scale`` (exponentiated), and the
        teacher-forced ``logits`` [N, L-1, vocab] for ``labels`` = ``tokens[:, 1:]``."""
        image = self.visual.forward_tokens(images)
        text = self.text.forward_tokens(tokens)
        return {"image_features": F.normalize(image["pooled"], dim=-1),
                "text_features": F.normalize(text["pooled"], dim=-1),
                "logit_scale": self.logit_scale.clamp(max=self.max_log_scale).exp(),
                "logits": self.text_decoder(image["tokens"], text["tokens"][:, :-1]),
                "labels": tokens[:, 1:]}

    def caption_loss(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Next-token cross-entropy over the non-padding labels (their mean, or their sum)."""
        flat = logits.reshape(-1, logits.shape[-1])
        return F.cross_entropy(flat if flat.dtype == torch.float64 else flat.float(), labels.reshape(-1),
                               ignore_index=self.config.pad_id, reduction=reduction)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.text.set_grad_checkpointing(enable)

    @torch.no_grad()
    def text_log_likelihood(self, images: torch.Tensor, tokens: torch.Tensor,
                            max_pairs: int = 2048) -> torch.Tensor:
        """[N_images, N_texts]: each text's teacher-forced log-likelihood given each image, the sum of
        log p(token_t | tokens_<t, image) over its tokens after the start token (padding left out);
        how a captioner classifies zero-shot. ``max_pairs``: (image, text) pairs decoded at once."""
        tokens = tokens.to(images.device)
        length = int((tokens != self.config.pad_id).sum(dim=1).max())  # right padding: trimming is exact
        tokens = tokens[:, : max(length, 2)]
        image = self.visual.forward_tokens(images)["tokens"]
        text = self.text.forward_tokens(tokens)["tokens"][:, :-1]  # the same for every image
        labels = tokens[:, 1:]
        keep = labels != self.config.pad_id
        n_texts = tokens.shape[0]
        chunk = max(1, max_pairs // n_texts)
        out = []
        for start in range(0, image.shape[0], chunk):
            ctx = image[start : start + chunk]
            n = ctx.shape[0]
            logits = self.text_decoder(ctx.repeat_interleave(n_texts, dim=0), text.repeat(n, 1, 1))
            logits = logits if logits.dtype == torch.float64 else logits.float()
            picked = logits.log_softmax(-1).gather(-1, labels.repeat(n, 1)[..., None])[..., 0]
            out.append((picked * keep.repeat(n, 1)).sum(dim=1).view(n, n_texts))
        return torch.cat(out)

    @torch.no_grad()
    def generate(self, images: torch.Tensor, config: GenerationConfig | None = None, use_cache: bool = True,
                 prompt: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Captions of ``images``: ``ids`` [N, <= 1 + max_len] starting with the start token, and the
        normalised ``image_features`` computed on the way (no second encoding needed)."""
        cfg = config or GenerationConfig()
        image = self.visual.forward_tokens(images)
        n = images.shape[0]
        if prompt is None:
            prompt = torch.full((n, 1), self.config.start_id, dtype=torch.long, device=images.device)
        beams = cfg.num_beams if cfg.strategy == "beam" else 1
        context = image["tokens"].repeat_interleave(beams, dim=0)
        room = min(self.config.decoder.context_length, self.config.text.context_length) - prompt.shape[1]
        if room < 1:
            raise ConfigError(f"the prompt fills the model's {self.config.text.context_length} positions")
        cfg = fit_to(cfg, room)

        def step(new: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
            if cache is None:  # recompute everything (the speed baseline)
                return self.text_decoder(context, self.text.forward_tokens(new)["tokens"])[:, -1]
            states = self.text.step(new, cache)
            logits = self.text_decoder(context, states, cache)[:, -1]
            cache.length += new.shape[1]
            return logits

        ids = generate(step, prompt, eos=self.config.end_id, pad=self.config.pad_id, config=cfg,
                       use_cache=use_cache, generator=generator)
        return {"ids": ids, "image_features": F.normalize(image["pooled"], dim=-1)}

