"""The causal text transformer of CLIP."""

from __future__ import annotations

import torch
from torch import nn

from clipforge.models.config import TextConfig
from clipforge.models.transformer import Transformer


class TextTransformer(nn.Module):
    """Token + learned positional embedding, causal transformer, final layer norm, pooled at the
    end-of-text token and projected.

    The end-of-text token has the highest id in the vocabulary, so its position is the argmax of
    the token ids (OpenAI's convention, kept by open_clip and Hugging Face).

    Args:
        config: the tower's shape.
        output_dim: width of the joint embedding space.
        activation: ``"gelu"`` or ``"quick_gelu"``.
    """

    def __init__(self, config: TextConfig, output_dim: int, activation: str = "gelu") -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.width))
        self.transformer = Transformer(
            config.width, config.layers, config.heads, config.mlp_ratio, activation
        )
        self.ln_final = nn.LayerNorm(config.width)
        # Causal attention + pooling at the end token: positions after the batch's last end token
        # cannot change the output, so they are not computed. Exact; off only to measure it.
        self.trim_padding = True
        self.text_projection = nn.Parameter(torch.empty(config.width, output_dim))
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=self.config.width**-0.5)
        self.transformer.init_weights()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens int64 [N, L] (L <= context_length) -> projected features [N, output_dim]."""
        return self.forward_tokens(tokens, trim=self.trim_padding)["pooled"]

    def forward_tokens(self, tokens: torch.Tensor, trim: bool = False) -> dict[str, torch.Tensor]:
        """``pooled`` [N, output_dim] as :meth:`forward`; ``tokens`` [N, L, width], every position after
        the final layer norm (each sees only those before it: causal); ``eot`` [N], the end token's
        position. ``trim`` drops the positions after the batch's last end token."""
        n, length = tokens.shape
        if length > self.config.context_length:
            raise ValueError(
                f"text has {length} tokens but the model's context length is "
                f"{self.config.context_length}"
            )
        eot = tokens.argmax(dim=-1)
        if trim and n > 0:
            length = int(eot.max()) + 1
            tokens = tokens[:, :length]
        x = self.token_embedding(tokens) + self.positional_embedding[:length].to(
            self.token_embedding.weight.dtype
        )
        x = self.ln_final(self.transformer(x, causal=True))
        pooled = x[torch.arange(n, device=x.device), eot]
        return {"pooled": pooled @ self.text_projection, "tokens": x, "eot": eot}
