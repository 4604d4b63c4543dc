"""CLIP-guided latent search: steer a trained generator by searching its latent for a prompt.

Galatolo et al. (2021, "Generating images from caption and vice versa via CLIP-guided generative
latent space search") keep the generator fixed and search its input, the GAN's z, with a genetic
algorithm whose fitness is a guiding CLIP's similarity between the image and the prompt; gradient
ascent through the generator and the CLIP is the alternative. Here the latent is the GAN's z or a
diffusion model's starting noise x_T (deterministic DDIM makes the image a function of it). Both
searches are given a budget of generator calls (images rendered) per prompt, so they compare with
drawing that many random latents and keeping the best (re-ranking).

The genetic algorithm keeps the latents inside the prior N(0, I): uniform crossover of two parents
keeps each coordinate a standard normal draw, and mutation is z' = sqrt(1 - s^2) z + s e with
e ~ N(0, I). Gradient ascent (Adam) projects each latent back to the sphere of radius sqrt(d),
where a d-dimensional standard normal draw lies. The guiding CLIP's gain is not the generator's
quality: a judge that did not guide (``clipforge eval generation``) measures how much of it holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from clipforge.errors import ConfigError

Method = Literal["random", "ga", "grad"]


@dataclass(frozen=True)
class SearchOptions:
    method: Method = "ga"
    budget: int = 64  # generator calls per prompt
    population: int = 16  # ga
    tournament: int = 3  # ga: parents are the best of this many random members
    mutation: float = 0.3  # ga: the mutation's s
    mutation_rate: float = 0.5  # ga: the share of children mutated
    elite: int = 2  # ga: members carried over unchanged
    lr: float = 0.1  # grad: Adam's step on the latent
    batch_size: int = 64  # renders per generator call batch

    def __post_init__(self) -> None:
        if self.method not in ("random", "ga", "grad"):
            raise ConfigError(f"search must be random, ga or grad, got {self.method!r}")
        if self.budget < 1:
            raise ConfigError(f"budget must be at least 1, got {self.budget}")
        if self.method == "ga" and self.budget < 2:
            raise ConfigError(f"the genetic search needs a budget of at least 2 generator calls, got {self.budget}")
        if self.method == "ga" and not 0 <= self.elite < self.population:
            raise ConfigError(f"elite ({self.elite}) must be below the population ({self.population})")
        if self.method == "ga" and not 2 <= self.population <= self.budget:
            raise ConfigError(f"the genetic search's population ({self.population}) must be between 2 and the "
                              f"budget ({self.budget})")


def clip_scorer(clip: Any, text_features: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A differentiable scorer: images [B, 3, H, W] in [-1, 1] -> the CLIP's cosine with the matching
    row of ``text_features`` [B or 1, D] (unit). Images are resized to the CLIP's input side (bicubic)
    and normalised as its preprocessing does."""
    pre = clip.preprocess
    side = pre.image_size
    device = next(clip.parameters()).device
    mean = torch.tensor(pre.mean, device=device)[:, None, None]
    std = torch.tensor(pre.std, device=device)[:, None, None]
    text = F.normalize(text_features.to(device).float(), dim=-1)

    def score(images: torch.Tensor) -> torch.Tensor:
        x = (images.to(device).float() + 1) / 2
        if x.shape[-1] != side:
            x = F.interpolate(x, size=(side, side), mode="bicubic", align_corners=False,
                              antialias=x.shape[-1] > side).clamp(0, 1)
        feats = F.normalize(clip.encode_image((x - mean) / std), dim=-1)
        return (feats * text).sum(-1)

    return score


def _render_scored(render: Callable, score: Callable, latents: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([score(render(chunk)).cpu() for chunk in latents.split(batch_size)])


def search_latents(render: Callable[[torch.Tensor], torch.Tensor], score: Callable[[torch.Tensor], torch.Tensor],
                   draw: Callable[[int], torch.Tensor], n: int, options: SearchOptions,
                   generator: torch.Generator | None = None) -> dict[str, Any]:
    """The ``n`` best latents found within ``options.budget`` renders: ``latents``, their guiding
    ``scores`` (best first) and ``calls`` (renders spent). ``render(latents)`` draws images,
    ``score(images)`` is the guide's similarity, ``draw(k)`` samples k latents from the prior."""
    if n > options.budget:
        raise ConfigError(f"budget {options.budget} is fewer generator calls than the {n} images asked")
    if options.method == "random":
        pool = draw(options.budget)
        scores = _render_scored(render, score, pool, options.batch_size)
        best = scores.topk(n).indices
        return {"latents": pool[best], "scores": scores[best], "calls": options.budget}
    if options.method == "ga":
        return _genetic(render, score, draw, n, options, generator)
    return _gradient(render, score, draw, n, options)


def _genetic(render: Callable, score: Callable, draw: Callable, n: int, o: SearchOptions,
             generator: torch.Generator | None) -> dict[str, Any]:
    g = generator or torch.Generator().manual_seed(0)
    pop = draw(o.population)
    fit = _render_scored(render, score, pop, o.batch_size)
    calls = len(pop)
    seen, seen_fit = [pop], [fit]  # every latent evaluated: the best n of all are returned
    while calls + o.population - o.elite <= o.budget:
        order = fit.argsort(descending=True)
        children = [pop[order[: o.elite]]]
        k = o.population - o.elite
        picks = torch.randint(len(pop), (2, k, o.tournament), generator=g)
        parents = [pop[picks[i].gather(1, fit[picks[i]].argmax(1, keepdim=True)).squeeze(1)] for i in (0, 1)]
        mask = torch.rand(parents[0].shape, generator=g) < 0.5  # uniform crossover
        child = torch.where(mask, parents[0], parents[1])
        mutate = (torch.rand(k, generator=g) < o.mutation_rate).view(-1, *[1] * (child.dim() - 1))
        noise = torch.randn(child.shape, generator=g)
        mutated = math.sqrt(1 - o.mutation ** 2) * child + o.mutation * noise
        child = torch.where(mutate, mutated, child)
        child_fit = _render_scored(render, score, child, o.batch_size)
        calls += k
        pop, fit = torch.cat([children[0], child]), torch.cat([fit[order[: o.elite]], child_fit])
        seen.append(child)
        seen_fit.append(child_fit)
    all_latents, all_fit = torch.cat(seen), torch.cat(seen_fit)
    best = all_fit.topk(n).indices
    return {"latents": all_latents[best], "scores": all_fit[best], "calls": calls}


def _gradient(render: Callable, score: Callable, draw: Callable, n: int, o: SearchOptions) -> dict[str, Any]:
    z = draw(n).clone().requires_grad_(True)
    radius = math.sqrt(z[0].numel())
    opt = torch.optim.Adam([z], lr=o.lr)
    best_z, best_fit = z.detach().clone(), torch.full((n,), -math.inf)
    calls = 0
    while calls + n <= o.budget:
        with torch.enable_grad():  # callers may sample under no_grad
            s = score(render(z)).cpu()
        calls += n
        better = s.detach() > best_fit
        best_fit = torch.where(better, s.detach(), best_fit)
        best_z[better] = z.detach()[better]
        opt.zero_grad()
        with torch.enable_grad():
            (-s.sum()).backward()
        opt.step()
        with torch.no_grad():  # back to where the prior's draws lie
            z.mul_(radius / z.flatten(1).norm(dim=1).clamp_min(1e-8).view(-1, *[1] * (z.dim() - 1)))
    order = best_fit.argsort(descending=True)
    return {"latents": best_z[order], "scores": best_fit[order], "calls": calls}
