"""Vision Transformer image tower (Dosovitskiy et al. 2021) in CLIP's variant."""

from __future__ import annotations

import torch
from torch import nn

from clipforge.models.config import ViTConfig
from clipforge.models.transformer import Transformer


class VisionTransformer(nn.Module):
    """Patch embedding (a convolution without bias), class token, learned positional embedding,
    layer norm before and after the transformer, class-token pooling and a linear projection.

    Args:
        config: the tower's shape.
        output_dim: width of the joint embedding space.
        activation: ``"gelu"`` or ``"quick_gelu"``.
    """

    def __init__(self, config: ViTConfig, output_dim: int, activation: str = "gelu") -> None:
        super().__init__()
        self.config = config
        w = config.width
        grid = config.image_size // config.patch_size
        self.conv1 = nn.Conv2d(3, w, kernel_size=config.patch_size, stride=config.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(w))
        self.positional_embedding = nn.Parameter(torch.empty(grid * grid + 1, w))
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = Transformer(w, config.layers, config.heads, config.mlp_ratio, activation)
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Parameter(torch.empty(w, output_dim))
        self.init_weights()

    def init_weights(self) -> None:
        scale = self.config.width**-0.5
        nn.init.normal_(self.class_embedding, std=scale)
        nn.init.normal_(self.positional_embedding, std=scale)
        nn.init.normal_(self.proj, std=scale)
        self.transformer.init_weights()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable

    def forward_middle(self, images: torch.Tensor) -> torch.Tensor:
        """The patch tokens after half the blocks [N, grid*grid, width] (a perceptual loss's middle layer)."""
        x = self.conv1(images).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype))
        for block in self.transformer.resblocks[: max(1, len(self.transformer.resblocks) // 2)]:
            x = block(x)
        return x[:, 1:]

    def _trunk(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv1(images).flatten(2).transpose(1, 2)  # [N, grid*grid, width]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.transformer(self.ln_pre(x))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [N,3,H,W] -> projected features [N, output_dim]."""
        return self.ln_post(self._trunk(images)[:, 0]) @ self.proj

    def forward_tokens(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``pooled`` [N, output_dim] as :meth:`forward`, and ``tokens`` [N, grid*grid, width]: the patch
        tokens after the final layer norm, unprojected (open_clip's ``output_tokens``; what CoCa's
        decoder and captioners cross-attend to)."""
        x = self.ln_post(self._trunk(images))
        return {"pooled": x[:, 0] @ self.proj, "tokens": x[:, 1:]}
