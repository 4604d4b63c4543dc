"""The diffusion noise schedule and the DDPM and DDIM updates.

Forward process (Ho et al. 2020, eq. 4): q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), with
abar_t = prod_{s<=t} (1 - beta_s); betas linear from ``beta_start`` to ``beta_end`` over ``timesteps``
(the paper's 1e-4 .. 0.02, T = 1000), or the cosine schedule of Nichol & Dhariwal 2021 (eq. 17,
betas capped at 0.999).

Reverse updates from a noise prediction eps:

* DDPM ancestral step (Ho et al. eq. 6-7): x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), clipped
  to [-1, 1]; the posterior mean  sqrt(abar_prev) beta_t / (1 - abar_t) x0 + sqrt(alpha_t)
  (1 - abar_prev) / (1 - abar_t) x_t, plus noise of variance (1 - abar_prev) / (1 - abar_t) beta_t
  (the "fixed small" variance) except at t = 0;
* DDIM step (Song et al. 2021, eq. 12): x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps
  + sigma z, sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev); eta = 0 is
  deterministic. Its timesteps are T/n apart, "leading" (0, T/n, 2T/n, ...), and the step after the
  last goes to abar = 1.

The network predicts the noise eps (``prediction="epsilon"``, Ho et al.) or the velocity
v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (``prediction="v"``, Salimans & Ho 2022, section 4), from
which x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v and eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t. Why v:
at large t, x0 from an eps prediction divides its error by sqrt(abar_t) (about 0.02 at t = 900), so
an undertrained eps model's early x0 guesses are noise that the later steps keep as texture; v's x0
carries no such factor. Min-SNR-gamma (Hang et al. 2023) weights each timestep's loss by
min(SNR_t, gamma) / SNR_t (eps) or / (SNR_t + 1) (v), SNR_t = abar_t / (1 - abar_t).

These are the numbers of diffusers' ``DDPMScheduler`` and ``DDIMScheduler`` with their defaults
(float32 betas and cumulative products, ``clip_sample``, ``fixed_small``, ``leading`` spacing,
``set_alpha_to_one``): ``tests/test_generation.py`` checks them against values recorded from
diffusers (``tests/fixtures/diffusers_schedulers``), so a clipforge model runs under diffusers'
schedulers and back.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from clipforge.errors import ConfigError


@dataclass(frozen=True)
class ScheduleConfig:
    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    kind: Literal["linear", "cosine"] = "linear"
    clip_sample: bool = True  # clip the predicted x0 to [-1, 1] (images live there)
    prediction: Literal["epsilon", "v"] = "epsilon"  # what the network predicts (diffusers' prediction_type)

    def __post_init__(self) -> None:
        if self.timesteps < 2:
            raise ConfigError(f"schedule.timesteps must be at least 2, got {self.timesteps}")
        if self.prediction not in ("epsilon", "v"):
            raise ConfigError(f"schedule.prediction must be epsilon or v, got {self.prediction!r}")
        if self.kind == "linear" and not 0 < self.beta_start < self.beta_end < 1:
            raise ConfigError(f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def diffusers_config(self) -> dict[str, Any]:
        """The same schedule as diffusers' scheduler config (``scheduler_config.json``)."""
        return {"num_train_timesteps": self.timesteps, "beta_start": self.beta_start, "beta_end": self.beta_end,
                "beta_schedule": "linear" if self.kind == "linear" else "squaredcos_cap_v2",
                "clip_sample": self.clip_sample,
                "prediction_type": "epsilon" if self.prediction == "epsilon" else "v_prediction",
                "variance_type": "fixed_small",
                "timestep_spacing": "leading", "steps_offset": 0, "set_alpha_to_one": True}


def cosine_betas(timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's schedule: abar(t) = cos^2((t/T + s) / (1 + s) * pi / 2), s = 0.008."""
    def abar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return torch.tensor([min(1 - abar((i + 1) / timesteps) / abar(i / timesteps), max_beta)
                         for i in range(timesteps)], dtype=torch.float32)


class NoiseSchedule:
    """betas, alphas and their cumulative products for a :class:`ScheduleConfig` (float32)."""

    def __init__(self, config: ScheduleConfig) -> None:
        self.config = config
        if config.kind == "linear":
            self.betas = torch.linspace(config.beta_start, config.beta_end, config.timesteps, dtype=torch.float32)
        else:
            self.betas = cosine_betas(config.timesteps)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.one = torch.tensor(1.0)

    @property
    def timesteps(self) -> int:
        return self.config.timesteps

    def _abar(self, t: int) -> torch.Tensor:
        return self.alphas_cumprod[t] if t >= 0 else self.one

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) for a batch of timesteps ``t`` [B]."""
        a, b = self._coef(t, x0)
        return a * x0 + b * noise

    def _coef(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        abar = self.alphas_cumprod.to(like.device)[t].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))
        return abar.sqrt(), (1 - abar).sqrt()

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network learns to output for x_t made from ``x0`` and ``noise``: eps, or v."""
        if self.config.prediction == "epsilon":
            return noise
        a, b = self._coef(t, x0)
        return a * noise - b * x0

    def loss_weight(self, t: torch.Tensor, snr_gamma: float) -> torch.Tensor:
        """Per-sample weights [B] of the training loss: 1, or min-SNR-gamma's when ``snr_gamma`` > 0."""
        if snr_gamma <= 0:
            return torch.ones(t.shape, device=t.device)
        abar = self.alphas_cumprod.to(t.device)[t]
        snr = abar / (1 - abar)
        return snr.clamp(max=snr_gamma) / (snr if self.config.prediction == "epsilon" else snr + 1)

    def split(self, out: torch.Tensor, t: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) from the network's output at timestep ``t``; x0 clipped when ``clip_sample``
        (eps is not re-derived from the clipped x0, as in diffusers)."""
        abar = self._abar(t)
        if self.config.prediction == "epsilon":
            eps = out
            x0 = (x - (1 - abar) ** 0.5 * eps) / abar ** 0.5
        else:
            x0 = abar ** 0.5 * x - (1 - abar) ** 0.5 * out
            eps = abar ** 0.5 * out + (1 - abar) ** 0.5 * x
        return (x0.clamp(-1, 1) if self.config.clip_sample else x0), eps

    def posterior_variance(self, t: int) -> torch.Tensor:
        """The DDPM step's noise variance ("fixed small"): (1 - abar_prev) / (1 - abar_t) * beta_t."""
        abar_t, abar_prev = self._abar(t), self._abar(t - 1)
        return torch.clamp((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev), min=1e-20)

    def ddpm_step(self, out: torch.Tensor, t: int, x: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """x_{t-1} from x_t and the network's output ``out`` (ancestral sampling)."""
        abar_t, abar_prev = self._abar(t), self._abar(t - 1)
        alpha_t = abar_t / abar_prev
        x0, _ = self.split(out, t, x)
        coef_x0 = abar_prev ** 0.5 * (1 - alpha_t) / (1 - abar_t)
        coef_xt = alpha_t ** 0.5 * (1 - abar_prev) / (1 - abar_t)
        mean = coef_x0 * x0 + coef_xt * x
        if t == 0:
            return mean
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return mean + self.posterior_variance(t) ** 0.5 * z

    def ddim_timesteps(self, steps: int) -> list[int]:
        """The ``steps`` timesteps DDIM visits, last first ("leading" spacing)."""
        if not 1 <= steps <= self.timesteps:
            raise ConfigError(f"steps must be between 1 and {self.timesteps}, got {steps}")
        ratio = self.timesteps // steps
        return [i * ratio for i in range(steps)][::-1]

    def ddim_step(self, out: torch.Tensor, t: int, x: torch.Tensor, steps: int, eta: float = 0.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
        """x at the previous of ``steps`` DDIM timesteps, from x_t and the network's output ``out``."""
        prev = t - self.timesteps // steps
        abar_t, abar_prev = self._abar(t), self._abar(prev)
        x0, eps = self.split(out, t, x)
        variance = (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)
        sigma = eta * variance ** 0.5
        out = abar_prev ** 0.5 * x0 + (1 - abar_prev - sigma ** 2) ** 0.5 * eps
        if eta > 0:
            out = out + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return out
