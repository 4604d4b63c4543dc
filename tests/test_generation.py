"""Diffusion from the joint embedding: the noise schedule and updates against diffusers, the model,
training on the engine, sampling, and the judge."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clipforge.generation.schedule import NoiseSchedule, ScheduleConfig

FIXTURE = Path(__file__).parent / "fixtures" / "diffusers_schedulers"


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_and_updates_match_diffusers(kind: str) -> None:
    ref = load_file(str(FIXTURE / "values.safetensors"))
    s = NoiseSchedule(ScheduleConfig(kind=kind))
    assert torch.equal(s.betas, ref[f"{kind}/betas"]) and torch.equal(s.alphas_cumprod, ref[f"{kind}/alphas_cumprod"])
    torch.testing.assert_close(torch.stack([s.posterior_variance(t) for t in range(1000)]),
                               ref[f"{kind}/posterior_variance"], rtol=1e-6, atol=0)
    x, eps = ref["x"], ref["eps"]
    for t in (999, 500, 1, 0):  # the same noise draws as diffusers' generator
        got = s.ddpm_step(eps, t, x, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(got, ref[f"{kind}/ddpm/{t}"], rtol=1e-5, atol=1e-6)
    assert s.ddim_timesteps(50) == ref[f"{kind}/ddim_timesteps"].tolist()
    for t in (980, 500, 0):
        torch.testing.assert_close(s.ddim_step(eps, t, x, steps=50), ref[f"{kind}/ddim/{t}"], rtol=1e-5, atol=1e-6)
