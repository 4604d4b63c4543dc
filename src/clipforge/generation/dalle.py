"""DALL-E (Ramesh et al. 2021, "Zero-Shot Text-to-Image Generation"): a decoder-only transformer
over one stream of caption tokens then image tokens.

- The caption's BPE tokens (padded to ``text_length``) and the image tokenizer's g x g ids are
  concatenated; the transformer predicts each token from those before it. Text and image tokens
  have their own embeddings and output heads; image positions embed their row and column.
- The loss is the cross-entropy of both parts, the text weighted ``text_loss_weight`` and the image
  1 - that (the paper: 1/8 and 7/8), each averaged over its tokens (text pads are not predicted).
- Attention (section 2.3 and appendix B.1): ``dense`` is plain causal attention; ``sparse`` is the
  paper's masks over the image-to-image part: layers cycle row, column, row, row, and the last one
  is convolutional. A row mask lets an image token see the previous g image tokens (its row so far
  and the end of the row above), a column mask the tokens above it in its column, a convolutional
  mask the earlier tokens of a k x k neighbourhood; every image token sees the whole caption.

The blocks are the library's pre-norm transformer blocks (:mod:`clipforge.models.transformer`),
run one by one with their layer's mask. Sampling is the library's autoregressive decoding
(:func:`clipforge.models.generation.generate`: temperature / top-k / top-p, batched, with a
key/value cache); the image is decoded by the tokenizer. The attached CLIP only re-ranks
(``--rerank``), as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.errors import ConfigError
from clipforge.generation.token_generator import TokenGenerator, TokenTransformerConfig, token_sampling
from clipforge.models.generation import KVCache, generate
from clipforge.models.transformer import ResidualBlock, init_blocks


@dataclass(frozen=True)
class DALLEConfig(TokenTransformerConfig):
    layers: int = 4
    attention: Literal["dense", "sparse"] = "dense"
    conv_kernel: int = 3  # the sparse pattern's last layer: a k x k causal neighbourhood
    text_loss_weight: float = 0.125

    def __post_init__(self) -> None:
        self.check("dalle", ("layers", "conv_kernel"))
        if self.attention not in ("dense", "sparse"):
            raise ConfigError(f"dalle attention must be dense or sparse, got {self.attention!r}")
        if not 0 <= self.text_loss_weight < 1:
            raise ConfigError(f"text_loss_weight must be in [0, 1), got {self.text_loss_weight}")


def image_mask(kind: str, grid: int, kernel: int = 3) -> torch.Tensor:
    """[n, n] boolean, True where image token a may attend to image token b (b <= a always)."""
    n = grid * grid
    a, b = torch.arange(n)[:, None], torch.arange(n)[None]
    causal = b <= a
    if kind == "dense":
        return causal
    if kind == "row":
        return causal & (a - b <= grid)
    if kind == "column":
        return causal & ((a - b) % grid == 0)
    if kind == "conv":
        r = kernel // 2
        return causal & ((a // grid - b // grid).abs() <= r) & ((a % grid - b % grid).abs() <= r)
    raise ValueError(f"unknown mask kind {kind!r}")


def layer_kinds(attention: str, layers: int) -> list[str]:
    """The image-to-image mask of each layer: all ``dense``, or the paper's sparse cycle."""
    if attention == "dense":
        return ["dense"] * layers
    cycle = ["row", "column", "row", "row"]
    return [cycle[i % 4] for i in range(layers - 1)] + ["conv"]


def sequence_masks(text_length: int, grid: int, kinds: list[str], kernel: int = 3) -> list[torch.Tensor]:
    """Per layer, the [S, S] mask over the input stream (S = text_length + grid^2 - 1: the last image
    token is predicted, never read): causal over the text, every image token sees all the text, and
    the layer's image mask among image tokens."""
    n = grid * grid - 1
    s = text_length + n
    out = []
    for kind in kinds:
        m = torch.ones(s, s).tril().bool()
        m[text_length:, text_length:] = image_mask(kind, grid, kernel)[:n, :n]
        out.append(m)
    return out


class DALLE(TokenGenerator):
    """Saved as arch ``dalle``; holds its image tokenizer (``image_tokenizer``) and its caption BPE
    (``self.tokenizer``) (:class:`~clipforge.generation.token_generator.TokenGenerator`)."""

    arch = "dalle"

    def __init__(self, config: DALLEConfig) -> None:
        super().__init__(config.tokenizer_arch, config.tokenizer_config)
        self.config = c = config
        g, k = self.grid, self.codes
        self.text_embed = nn.Embedding(c.vocab_size + 1, c.width)
        self.text_pos = nn.Embedding(c.text_length, c.width)
        self.image_embed = nn.Embedding(k, c.width)
        self.row_pos = nn.Embedding(g, c.width)
        self.col_pos = nn.Embedding(g, c.width)
        self.blocks = nn.ModuleList(ResidualBlock(c.width, c.heads, 4.0, "gelu") for _ in range(c.layers))
        self.ln_final = nn.LayerNorm(c.width)
        self.text_head = nn.Linear(c.width, c.vocab_size)
        self.image_head = nn.Linear(c.width, k)
        init_blocks(self.blocks, c.width)
        for emb in (self.text_embed, self.text_pos, self.image_embed, self.row_pos, self.col_pos):
            nn.init.normal_(emb.weight, std=0.02)
        for head in (self.text_head, self.image_head):
            nn.init.normal_(head.weight, std=c.width ** -0.5)
            nn.init.zeros_(head.bias)
        kinds = layer_kinds(c.attention, c.layers)
        self._masks = sequence_masks(c.text_length, g, kinds, c.conv_kernel)

    def masks(self, device: torch.device) -> list[torch.Tensor]:
        if self._masks[0].device != device:
            self._masks = [m.to(device) for m in self._masks]
        return self._masks

    def _embed_image(self, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
        pos = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        return self.image_embed(tokens) + self.row_pos(pos // self.grid) + self.col_pos(pos % self.grid)

    def _embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_embed(ids) + self.text_pos(torch.arange(ids.shape[1], device=ids.device))

    def _run(self, x: torch.Tensor, start: int = 0, cache: KVCache | None = None) -> torch.Tensor:
        """The blocks over stream positions start .. start + T - 1, each with its layer's mask."""
        end = start + x.shape[1]
        for i, (block, mask) in enumerate(zip(self.blocks, self.masks(x.device))):
            x = block(x, mask=mask[start:end, :end], cache=cache, name=str(i))
        return self.ln_final(x)

    def forward(self, text: torch.Tensor, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of the text tokens after the first (``text_logits`` [B, L-1, V]) and of every image
        token (``image_logits`` [B, g^2, K]) for text ids [B, L] and image ids [B, g^2]."""
        length = self.config.text_length
        x = torch.cat([self._embed_text(text), self._embed_image(image[:, :-1])], 1)
        h = self._run(x)
        return {"text_logits": self.text_head(h[:, :length - 1]), "image_logits": self.image_head(h[:, length - 1:])}

    def loss(self, text: torch.Tensor, image: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self(text, image)
        pad = self.config.vocab_size
        target = text[:, 1:]
        text_ce = F.cross_entropy(out["text_logits"].flatten(0, 1).float(),
                                  target.masked_fill(target == pad, -100).flatten(), ignore_index=-100)
        image_ce = F.cross_entropy(out["image_logits"].flatten(0, 1).float(), image.flatten())
        w = self.config.text_loss_weight
        return {"loss": w * text_ce + (1 - w) * image_ce, "text_ce": text_ce.detach(), "image_ce": image_ce.detach()}

    # -- sampling -----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_tokens(self, text: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                      generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
        """Image ids [B, g^2] for text ids [B, L], one token at a time (temperature 0: greedy)."""
        length = self.config.text_length

        def step(ids: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
            if cache is None:  # the whole stream again: the caption, then the image ids so far
                x = torch.cat([self._embed_text(ids[:, :length]), self._embed_image(ids[:, length:])], 1)
                return self.image_head(self._run(x)[:, -1])
            start = cache.length
            x = self._embed_text(ids) if start == 0 else self._embed_image(ids, start=start - length)
            h = self._run(x, start, cache)
            cache.length += ids.shape[1]
            return self.image_head(h[:, -1])

        out = generate(step, text, eos=-1, config=token_sampling(self.grid ** 2, temperature, top_k, top_p),
                       use_cache=use_cache, generator=generator)
        return out[:, length:]
