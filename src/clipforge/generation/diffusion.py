"""A diffusion model conditioned on CLIP embeddings, with classifier-free guidance.

Training (Ho et al. 2020, algorithm 1): x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps for a uniform
t, loss L_simple = ||eps - eps_theta(x_t, t, c)||^2. The condition c is a unit CLIP embedding, of
the caption (``condition="text"``: a text-to-image model) or of the image itself
(``condition="image"``: unCLIP's decoder, Ramesh et al. 2022), projected to the UNet's timestep
embedding width and added to it. With probability ``cond_drop`` it is dropped (the projection
zeroed) so that one network also predicts unconditionally; at sampling, classifier-free guidance
(Ho & Salimans 2021) uses eps = eps(x, t, 0) + s (eps(x, t, c) - eps(x, t, 0)), both halves in one
forward of a doubled batch. Sampling is DDPM's ancestral chain (all T steps) or DDIM's (any number
of steps, deterministic at eta = 0), from :mod:`clipforge.generation.schedule`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.config import StoredConfig
from clipforge.errors import ConfigError
from clipforge.generation.schedule import NoiseSchedule, ScheduleConfig
from clipforge.generation.unet import UNet, UNetConfig
from clipforge.models.clip_linked import ClipLinked
from clipforge.utils.progress import progress_bar

Condition = Literal["text", "image", "none"]
Sampler = Literal["ddim", "ddpm"]


@dataclass(frozen=True)
class DiffusionConfig(StoredConfig):
    image_size: int = 32
    condition: Condition = "text"
    clip_dim: int = 512
    cond_drop: float = 0.1  # classifier-free guidance: the condition is dropped this often in training
    unet: UNetConfig = field(default_factory=UNetConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    clip_path: str = ""
    clip_fingerprint: str = ""

    def __post_init__(self) -> None:
        levels = len(self.unet.channels) - 1
        if self.image_size % 2 ** levels:
            raise ConfigError(f"image_size={self.image_size} must be divisible by 2^{levels} (the UNet's levels)")
        if not 0 <= self.cond_drop < 1:
            raise ConfigError(f"cond_drop must be in [0, 1), got {self.cond_drop}")



class CLIPDiffusion(ClipLinked):
    """A UNet denoiser and the projection of the CLIP condition; saved as arch ``clip_diffusion``."""

    arch = "clip_diffusion"
    kind = "generator"

    def __init__(self, config: DiffusionConfig) -> None:
        super().__init__()
        self.config = config
        self.unet = UNet(config.unet)
        self.cond_proj = nn.Linear(config.clip_dim, config.unet.time_dim) if config.condition != "none" else None
        self.schedule = NoiseSchedule(config.schedule)

    def predict(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None,
            keep: torch.Tensor | None = None) -> torch.Tensor:
        """The network's output: the predicted noise (or v, per ``schedule.prediction``); ``keep`` [B]
        (bool) zeroes the condition of the rows it leaves out."""
        emb = None
        if cond is not None and self.cond_proj is not None:
            emb = self.cond_proj(F.normalize(cond.float(), dim=-1).to(x.dtype))
            if keep is not None:
                emb = emb * keep[:, None].to(emb.dtype)
        return self.unet(x, t, emb)

    def loss(self, x0: torch.Tensor, cond: torch.Tensor | None, draws: dict[str, torch.Tensor] | None = None,
             reduction: str = "mean", snr_gamma: float = 0.0) -> torch.Tensor:
        """L_simple on images ``x0`` in [-1, 1] (the MSE to the noise, or to v under
        ``schedule.prediction="v"``): a random t, noise and condition drop per image, or those of
        ``draws`` (``t``, ``noise``, ``u`` uniform in [0, 1); see :func:`training_draws`).
        ``snr_gamma`` > 0 weights each sample by min-SNR-gamma (see :mod:`~clipforge.generation.schedule`)."""
        draws = draws or training_draws(len(x0), x0.shape[1:], self.schedule.timesteps, device=x0.device)
        t, noise = draws["t"], draws["noise"].to(x0.dtype)
        keep = None
        if cond is not None and self.config.cond_drop > 0:
            keep = draws["u"] >= self.config.cond_drop
        pred = self.predict(self.schedule.add_noise(x0, noise, t), t, cond, keep)
        target = self.schedule.target(x0, noise, t)
        per = F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)
        per = per * self.schedule.loss_weight(t, snr_gamma)
        return per.mean() if reduction == "mean" else per.sum()

    @torch.no_grad()
    def sample(self, cond: torch.Tensor | None, n: int | None = None, steps: int = 50, sampler: Sampler = "ddim",
               guidance: float = 3.0, eta: float = 0.0, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None, progress: bool = False) -> torch.Tensor:
        """Images [N, C, H, W] in [-1, 1] for conditions ``cond`` [N, clip_dim] (``None``: ``n``
        unconditional samples). ``guidance`` s: 0 is unconditional, 1 conditional without guidance.
        ``noise``: the starting x_T (e.g. an interpolation between two noises)."""
        return self.denoise(cond, n, steps, sampler, guidance, eta, generator, noise, progress)

    def denoise(self, cond: torch.Tensor | None, n: int | None = None, steps: int = 50, sampler: Sampler = "ddim",
                guidance: float = 3.0, eta: float = 0.0, generator: torch.Generator | None = None,
                noise: torch.Tensor | None = None, progress: bool = False) -> torch.Tensor:
        """:meth:`sample` with autograd left as the caller set it (gradients flow back to ``noise``)."""
        if guidance < 0:
            raise ConfigError(f"guidance must be at least 0, got {guidance}")
        if sampler not in ("ddim", "ddpm"):
            raise ConfigError(f"sampler must be ddim or ddpm, got {sampler!r}")
        device = next(self.parameters()).device
        count = len(cond) if cond is not None else (n or 1)
        size, ch = self.config.image_size, self.config.unet.in_channels
        x = noise.to(device) if noise is not None else torch.randn((count, ch, size, size), generator=generator,
                                                                    device="cpu").to(device)
        if cond is not None:
            cond = cond.to(device)
        guided = cond is not None and guidance != 1.0
        ts = list(range(self.schedule.timesteps))[::-1] if sampler == "ddpm" else self.schedule.ddim_timesteps(steps)
        self.eval()
        with progress_bar("sample", total=len(ts), enabled=progress) as bar:
            for t in ts:
                tt = torch.full((count,), t, device=device, dtype=torch.long)
                if guided:  # conditional and unconditional halves in one forward
                    keep = torch.cat([torch.ones(count, dtype=torch.bool, device=device),
                                      torch.zeros(count, dtype=torch.bool, device=device)])
                    both = self.predict(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([cond, cond]), keep)
                    o_cond, o_unc = both.chunk(2)
                    out = o_unc + guidance * (o_cond - o_unc)  # linear, so the same for eps and for v
                else:
                    out = self.predict(x, tt, cond)
                if sampler == "ddpm":
                    x = self.schedule.ddpm_step(out, t, x, generator=_cpu_draws(generator, x))
                else:
                    x = self.schedule.ddim_step(out, t, x, steps, eta=eta, generator=_cpu_draws(generator, x))
                bar.advance()
        return x.clamp(-1, 1)

    @torch.no_grad()
    def generate(self, prompts: list[str], **kwargs: Any) -> dict[str, torch.Tensor]:
        """Images for text ``prompts`` through the attached CLIP (a text-conditioned model), and the
        prompts' CLIP ``text_features``."""
        if self.config.condition != "text":
            raise ConfigError(f"this generator is conditioned on CLIP {self.config.condition} embeddings; give it "
                              "image embeddings (unCLIP: a prior maps text to them)")
        feats = self.text_features(prompts)
        return {"images": self.sample(feats, **kwargs), "text_features": feats}

    # --- the latent interface of latent search (:mod:`clipforge.generation.latent_search`) ---------
    def latent_shape(self) -> tuple[int, ...]:
        """The starting noise x_T's shape: deterministic DDIM (eta = 0) makes the image a function of it."""
        return (self.config.unet.in_channels, self.config.image_size, self.config.image_size)

    def draw_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn((n, *self.latent_shape()), generator=generator)

    def condition(self, prompts: list[str]) -> torch.Tensor:
        """What :meth:`render` is conditioned on: the prompts' unit CLIP text embeddings."""
        return self.text_features(prompts)

    def render(self, latents: torch.Tensor, cond: torch.Tensor, steps: int = 50, guidance: float = 3.0,
               **_: Any) -> torch.Tensor:
        """Deterministic DDIM from x_T = ``latents``, differentiable in them; one condition row is
        shared by every latent."""
        if len(cond) == 1:
            cond = cond.expand(len(latents), -1)
        return self.denoise(cond, steps=steps, sampler="ddim", guidance=guidance, eta=0.0, noise=latents)


def training_draws(n: int, shape: tuple[int, ...] | torch.Size, timesteps: int, seeds: list[int] | None = None,
                   device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Per-sample randomness of a diffusion training step: timestep ``t``, ``noise`` and ``u`` (for
    the condition drop). With ``seeds`` (one per sample: e.g. from the step and the sample's row)
    each sample's draws depend on its seed alone, so micro-batches and ranks see the same numbers
    as the whole batch in one process."""
    if seeds is None:
        return {"t": torch.randint(0, timesteps, (n,), device=device), "noise": torch.randn((n, *shape), device=device),
                "u": torch.rand(n, device=device)}
    ts, noises, us = [], [], []
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        ts.append(torch.randint(0, timesteps, (1,), generator=g))
        noises.append(torch.randn(tuple(shape), generator=g))
        us.append(torch.rand(1, generator=g))
    return {"t": torch.cat(ts).to(device), "noise": torch.stack(noises).to(device), "u": torch.cat(us).to(device)}


def _cpu_draws(generator: torch.Generator | None, x: torch.Tensor) -> torch.Generator | None:
    """A CPU generator draws on the CPU (same numbers on every device); others as given."""
    return generator if generator is None or generator.device == x.device else None


def slerp(a: torch.Tensor, b: torch.Tensor, w: float) -> torch.Tensor:
    """Spherical interpolation between two noises (the way DDPM/DDIM papers interpolate x_T)."""
    flat_a, flat_b = a.flatten(), b.flatten()
    omega = torch.arccos(torch.clamp(F.cosine_similarity(flat_a, flat_b, dim=0), -1, 1))
    if float(omega) < 1e-6:
        return (1 - w) * a + w * b
    return (torch.sin((1 - w) * omega) * a + torch.sin(w * omega) * b) / math.sin(float(omega))


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images -> uint8 [N, C, H, W]."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
