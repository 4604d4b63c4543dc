"""unCLIP's prior (Ramesh et al. 2022, section 2.1): a diffusion model over CLIP *image* embeddings,
conditioned on the caption's CLIP *text* embedding.

The image embedding, unit length times sqrt(d) (so each dimension has about unit variance, the
scale the noise schedule expects), is diffused as images are; the network predicts the clean
embedding x_0 directly (the paper's choice for the prior), from x_t, the timestep and the text
embedding. The text embedding is dropped with probability ``cond_drop`` for classifier-free
guidance. Where the paper uses a decoder-only transformer over a sequence of tokens, this prior is
a residual MLP: with one condition vector and one output vector there is no sequence to attend over.
Sampling is DDIM from the predicted x_0, and the result is returned at unit length.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.generation.schedule import NoiseSchedule, ScheduleConfig
from clipforge.generation.unet import timestep_features


@dataclass(frozen=True)
class PriorConfig:
    dim: int = 512  # the CLIP embedding width
    width: int = 256
    layers: int = 4
    cond_drop: float = 0.1
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class DiffusionPrior(nn.Module):
    """``forward(x_t, t, text, keep)``: the predicted clean image embedding (scaled by sqrt(d))."""

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        self.config = c = config
        self.inp = nn.Linear(c.dim, c.width)
        self.text = nn.Linear(c.dim, c.width)
        self.time = nn.Sequential(nn.Linear(c.width, c.width), nn.SiLU(), nn.Linear(c.width, c.width))
        self.blocks = nn.ModuleList([_Block(c.width) for _ in range(c.layers)])
        self.out = nn.Sequential(nn.LayerNorm(c.width), nn.Linear(c.width, c.dim))
        self.schedule = NoiseSchedule(c.schedule)

    @property
    def scale(self) -> float:
        return math.sqrt(self.config.dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        cond = self.text(F.normalize(text.float(), dim=-1).to(x.dtype))
        if keep is not None:
            cond = cond * keep[:, None].to(cond.dtype)
        h = self.inp(x) + cond + self.time(timestep_features(t, self.config.width).to(x.dtype))
        for block in self.blocks:
            h = block(h)
        return self.out(h)

    def loss(self, image: torch.Tensor, text: torch.Tensor, draws: dict[str, torch.Tensor] | None = None,
             reduction: str = "mean") -> torch.Tensor:
        """MSE between the predicted and the true clean (scaled) image embedding; ``draws`` as in
        :meth:`CLIPDiffusion.loss <clipforge.generation.diffusion.CLIPDiffusion.loss>`."""
        from clipforge.generation.diffusion import training_draws

        x0 = F.normalize(image.float(), dim=-1) * self.scale
        draws = draws or training_draws(len(x0), x0.shape[1:], self.schedule.timesteps, device=x0.device)
        t, noise = draws["t"], draws["noise"]
        keep = draws["u"] >= self.config.cond_drop
        pred = self(self.schedule.add_noise(x0, noise, t), t, text, keep)
        per = F.mse_loss(pred, x0, reduction="none").mean(1)
        return per.mean() if reduction == "mean" else per.sum()

    @torch.no_grad()
    def sample(self, text: torch.Tensor, steps: int = 50, guidance: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Unit image embeddings [N, dim] for text embeddings [N, dim] (DDIM, eta 0)."""
        device = next(self.parameters()).device
        n = len(text)
        text = text.to(device)
        x = torch.randn((n, self.config.dim), generator=generator).to(device)
        s = self.schedule
        self.eval()
        for t in s.ddim_timesteps(steps):
            tt = torch.full((n,), t, dtype=torch.long, device=device)
            if guidance != 1.0:
                keep = torch.cat([torch.ones(n, dtype=torch.bool, device=device),
                                  torch.zeros(n, dtype=torch.bool, device=device)])
                cond_x0, unc_x0 = self(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([text, text]), keep).chunk(2)
                x0 = unc_x0 + guidance * (cond_x0 - unc_x0)
            else:
                x0 = self(x, tt, text)
            abar = s.alphas_cumprod[t]
            eps = (x - abar.sqrt() * x0) / (1 - abar).sqrt()
            prev = t - s.timesteps // steps
            abar_prev = s.alphas_cumprod[prev] if prev >= 0 else s.one
            x = abar_prev.sqrt() * x0 + (1 - abar_prev).sqrt() * eps
        return F.normalize(x, dim=-1)
