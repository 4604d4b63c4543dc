"""Image grids: many small images as one PNG (samples per prompt, variations)."""

from __future__ import annotations

import torch
from PIL import Image


def image_grid(images: torch.Tensor, columns: int, scale: int = 1, pad: int = 2) -> Image.Image:
    """uint8 [N, 3, H, W] images as one picture, ``columns`` per row, each enlarged ``scale`` times
    (nearest neighbour, so small generated images stay sharp), ``pad`` white pixels between."""
    n, _, h, w = images.shape
    columns = max(1, min(columns, n))
    rows = (n + columns - 1) // columns
    hs, ws = h * scale, w * scale
    grid = Image.new("RGB", (columns * (ws + pad) + pad, rows * (hs + pad) + pad), "white")
    for i, img in enumerate(images):
        tile = Image.fromarray(img.permute(1, 2, 0).cpu().numpy())
        if scale != 1:
            tile = tile.resize((ws, hs), Image.NEAREST)
        grid.paste(tile, (pad + (i % columns) * (ws + pad), pad + (i // columns) * (hs + pad)))
    return grid
