"""What a unit or a concept responds to (Goh et al. 2021, "Multimodal neurons in artificial neural
networks"; Olah et al. 2017, "Feature visualization").

A *unit* is one channel of a module of the image tower, named ``MODULE:CHANNEL``
(``visual.layer4.0:5``); its activation on an image is the channel's mean over spatial positions
(a convolution's [B, C, H, W]) or over tokens (a transformer block's [B, L, D] or [L, B, D]). A
*concept* is a prompt; its "activation" is the cosine similarity of the image embedding with the
prompt's text embedding. Two views of either:

* the dataset images that activate it most (:func:`top_images`);
* an image optimised to activate it (:func:`visualise`): pixels parameterised in a decorrelated
  Fourier basis (each frequency scaled by 1 / frequency, so steps are not dominated by high
  frequencies) through a sigmoid, with random jitter (shifts of a few pixels) at every step so
  the result does not rely on a pixel-exact pattern, as in Olah et al.'s lucid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from clipforge.errors import ConfigError


@dataclass(frozen=True)
class Target:
    """A unit (``module`` and ``channel``) or a concept (``prompt``)."""

    module: str = ""
    channel: int = 0
    prompt: str = ""

    @classmethod
    def parse_unit(cls, spec: str) -> Target:
        module, _, channel = spec.rpartition(":")
        if not module or not channel.isdigit():
            raise ConfigError(f"--unit {spec!r}: expected MODULE:CHANNEL, e.g. visual.layer4.0:5")
        return cls(module=module, channel=int(channel))

    @property
    def label(self) -> str:
        return f'"{self.prompt}"' if self.prompt else f"{self.module}:{self.channel}"


def unit_modules(model: nn.Module, prefix: str = "visual") -> list[str]:
    """Module names of the image tower (what ``--unit`` can name)."""
    return [n for n, _ in model.named_modules() if n.startswith(prefix + ".")]


class Objective:
    """The target's activation for a batch of normalised images [B, 3, H, W] (one value per image)."""

    def __init__(self, model: Any, target: Target) -> None:
        self.model, self.target = model, target
        self.captured: list[torch.Tensor] = []
        self.text = None
        if target.prompt:
            from clipforge.evaluation.embed import embed_texts

            self.text = embed_texts(model, [target.prompt])[0].to(next(model.parameters()).device)
            return
        modules = dict(model.named_modules())
        if target.module not in modules:
            near = [n for n in modules if n.startswith(target.module.rsplit(".", 1)[0])][:5]
            raise ConfigError(f"--unit: no module {target.module!r} in this model" +
                              (f"; near it: {', '.join(near)}" if near else "; see `clipforge explain --list-units`"))
        self.hook = modules[target.module].register_forward_hook(lambda m, i, o: self.captured.append(o))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.captured.clear()
        feats = self.model.encode_image(x, normalize=True)
        if self.text is not None:
            return feats.float() @ self.text.float()
        out = self.captured[-1]
        out = out[0] if isinstance(out, tuple) else out
        return _channel_mean(out, self.target.channel, len(x))

    def close(self) -> None:
        if self.text is None:
            self.hook.remove()


def _channel_mean(out: torch.Tensor, channel: int, batch: int) -> torch.Tensor:
    if out.dim() == 4:  # [B, C, H, W]
        if channel >= out.shape[1]:
            raise ConfigError(f"--unit: channel {channel} out of range; the module has {out.shape[1]} channels")
        return out[:, channel].float().mean(dim=(1, 2))
    if out.dim() == 3:  # tokens: [B, L, D] or [L, B, D]
        if channel >= out.shape[-1]:
            raise ConfigError(f"--unit: channel {channel} out of range; the module has {out.shape[-1]} channels")
        tokens_first = out.shape[0] != batch and out.shape[1] == batch
        return out[..., channel].float().mean(dim=0 if tokens_first else 1)
    if out.dim() == 2:  # [B, D]
        return out[:, channel].float()
    raise ConfigError(f"--unit: the module's output has shape {tuple(out.shape)}; expected 2 to 4 dimensions")


@torch.no_grad()
def top_images(model: Any, target: Target, images: Sequence[str], k: int = 16,
               batch_size: int = 64) -> tuple[list[tuple[str, float]], int]:
    """The ``k`` readable images with the highest activation, best first, and how many were unreadable."""
    from clipforge.images.decode import open_image

    device = next(model.parameters()).device
    objective = Objective(model, target)
    scores: list[tuple[str, float]] = []
    bad = 0
    try:
        for i in range(0, len(images), batch_size):
            pil, names = [], []
            for p in images[i : i + batch_size]:
                try:
                    pil.append(open_image(p))
                    names.append(p)
                except Exception:  # counted, never the end of the run
                    bad += 1
            if pil:
                values = objective(model.preprocess.batch(pil).to(device))
                scores += list(zip(names, values.cpu().tolist()))
    finally:
        objective.close()
    return sorted(scores, key=lambda s: -s[1])[:k], bad


def fourier_image(size: int, generator: torch.Generator, scale: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable spectrum [3, size, size//2+1, 2] and its per-frequency scale (1 / frequency)."""
    fy = torch.fft.fftfreq(size)[:, None]
    fx = torch.fft.rfftfreq(size)[None, :]
    freq = torch.sqrt(fx ** 2 + fy ** 2).clamp(min=1.0 / size)
    spectrum = scale * torch.randn(3, size, size // 2 + 1, 2, generator=generator)
    return spectrum, (1.0 / freq) / size


def spectrum_to_image(spectrum: torch.Tensor, freq_scale: torch.Tensor, size: int) -> torch.Tensor:
    """[1, 3, size, size] in (0, 1)."""
    coeffs = torch.view_as_complex(spectrum) * freq_scale
    return torch.sigmoid(torch.fft.irfft2(coeffs, s=(size, size), norm="ortho") * 4)[None]


def visualise(model: Any, target: Target, steps: int = 256, lr: float = 0.05, jitter: int | None = None,
              seed: int = 0, snapshots: int = 4, fallback: torch.Tensor | None = None) -> dict[str, Any]:
    """An image optimised (Adam on its Fourier coefficients) to raise the target's activation.

    The start is random noise, stronger until the target has a gradient; when no noise does (a unit
    silent on noise), ``fallback`` (an image [3, H, W] in [0, 1], e.g. the unit's top dataset image)
    is the start. Returns ``image`` [3, H, W] in [0, 1], ``history`` (the activation at each step,
    measured without jitter every ``steps // 16`` steps), ``snapshots`` (images along the way) and
    ``start`` (the noise scale used, or ``"fallback"``)."""
    if steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}")
    size = model.preprocess.image_size
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    mean = torch.tensor(model.preprocess.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(model.preprocess.std, device=device).view(1, 3, 1, 1)
    shift = jitter if jitter is not None else max(1, size // 16)
    objective = Objective(model, target)
    was_training = model.training
    frozen = [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)  # gradients flow to the image only
    spectrum, freq_scale, start = _live_start(objective, size, g, mean, std, device, fallback)
    opt = torch.optim.Adam([spectrum], lr=lr)
    history, shots = [], []
    every = max(1, steps // 16)
    shot_every = max(1, steps // max(1, snapshots))
    try:
        for step in range(steps + 1):
            img = spectrum_to_image(spectrum, freq_scale, size)
            if step % every == 0 or step == steps:
                with torch.no_grad():
                    history.append((step, float(objective((img - mean) / std)[0])))
            if step % shot_every == 0 and step < steps:
                shots.append(img[0].detach().cpu())
            if step == steps:
                break
            dx, dy = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=g))
            loss = -objective((torch.roll(img, (dy, dx), dims=(2, 3)) - mean) / std).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        objective.close()
        model.train(was_training)
        for p, flag in zip(model.parameters(), frozen):
            p.requires_grad_(flag)
    final = spectrum_to_image(spectrum, freq_scale, size)[0].detach().cpu()
    return {"image": final, "history": history, "snapshots": [*shots, final], "start": start}


START_SCALES = (0.01, 0.05, 0.2, 0.5, 1.0)


def _live_start(objective: Objective, size: int, g: torch.Generator, mean: torch.Tensor, std: torch.Tensor,
                device: torch.device, fallback: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """A starting spectrum where the target has a gradient. A unit after a ReLU is often exactly 0 on a
    near-grey image, and then no step can move it; stronger noise, or else ``fallback``, wakes it up."""

    def live(spectrum: torch.Tensor, freq_scale: torch.Tensor) -> bool:
        value = objective((spectrum_to_image(spectrum, freq_scale, size) - mean) / std).mean()
        (grad,) = torch.autograd.grad(value, spectrum, allow_unused=True)
        return grad is not None and bool(grad.abs().sum() > 0)

    for scale in START_SCALES:
        spectrum, freq_scale = fourier_image(size, g, scale)
        spectrum, freq_scale = spectrum.to(device).requires_grad_(True), freq_scale.to(device)
        if live(spectrum, freq_scale):
            return spectrum, freq_scale, scale
    if fallback is not None:
        spectrum = image_to_spectrum(fallback.to(device), freq_scale).requires_grad_(True)
        return spectrum, freq_scale, "fallback"
    return spectrum, freq_scale, scale  # silent whatever the start: the history shows it


def image_to_spectrum(image: torch.Tensor, freq_scale: torch.Tensor) -> torch.Tensor:
    """The spectrum whose :func:`spectrum_to_image` is ``image`` [3, H, W] (values clamped off 0 and 1)."""
    size = image.shape[-1]
    logits = torch.logit(image.float().clamp(0.01, 0.99)) / 4
    coeffs = torch.fft.rfft2(logits, s=(size, size), norm="ortho") / freq_scale
    return torch.view_as_real(coeffs).contiguous()
