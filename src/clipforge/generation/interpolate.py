"""Interpolations through a generator's latent (a diffusion model's x_T under deterministic DDIM,
eta = 0; a GAN's z): between two latents for one prompt (the DDPM/DDIM papers' latent
interpolation, spherical because the latent is Gaussian), or between two prompts' CLIP embeddings
from one latent (unCLIP's text diffs, through the prior for unCLIP; GAN-INT's interpolated
captions for a GAN)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from clipforge.errors import ConfigError
from clipforge.generation.diffusion import slerp
from clipforge.generation.token_generator import TokenGenerator


def _decoder_and_condition(model: Any, prompt: str, generator: torch.Generator) -> tuple[Any, Any]:
    if getattr(model, "arch", "") == "unclip":
        return model.decoder, model.prior.sample(model.text_features([prompt]), generator=generator)
    return model, model.condition([prompt])


@torch.no_grad()
def interpolate(model: Any, prompt: str, to: str | None = None, frames: int = 8, steps: int = 50,
                guidance: float = 3.0, seed: int = 0) -> torch.Tensor:
    """``frames`` images [-1, 1]: from one noise to another for ``prompt``, or (``to`` given) from
    ``prompt``'s embedding to ``to``'s with one noise."""
    g = torch.Generator().manual_seed(seed)
    if isinstance(model, TokenGenerator):
        raise ConfigError(f"{model.arch} draws discrete tokens and has no latent to interpolate (ddpm, unclip, the "
                          "GANs and aligndraw have one)")
    decoder, a = _decoder_and_condition(model, prompt, g)
    n1, n2 = decoder.draw_latents(2, g).split(1)
    ws = torch.linspace(0, 1, frames).tolist()
    if to is None:
        noise = torch.cat([slerp(n1, n2, w) for w in ws])
        cond = a
    elif not isinstance(a, torch.Tensor):
        raise ConfigError(f"{getattr(model, 'arch', 'this generator')} is conditioned on the prompt's words, which do "
                          "not interpolate; interpolate between two latents (no second prompt)")
    else:
        _, b = _decoder_and_condition(model, to, g)
        noise = n1.expand(frames, *n1.shape[1:])
        cond = torch.cat([F.normalize(slerp(a, b, w), dim=-1) for w in ws])
    return decoder.render(noise, cond, steps=steps, guidance=guidance)
