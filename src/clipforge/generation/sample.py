"""Sampling any clipforge generator from prompts, with CLIP re-ranking.

Re-ranking (as DALL-E did with 512 samples per caption, Ramesh et al. 2021): draw ``rerank`` times
as many images as asked, keep the ``n`` the re-ranking CLIP finds closest to the prompt. It is an
option of every generator; the re-ranking CLIP (by default the generator's own) must then not be
the one that judges the result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from clipforge.errors import ConfigError
from clipforge.evaluation.embed import embed_pixels, embed_texts
from clipforge.generation.diffusion import to_uint8

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SampleOptions:
    n: int = 4  # images kept per prompt
    steps: int = 50
    sampler: str = "ddim"
    guidance: float = 3.0
    eta: float = 0.0
    rerank: int = 1  # draw rerank * n, keep the best n (1: no re-ranking)
    search: str = "none"  # latent search: none, random, ga or grad (clipforge.generation.latent_search)
    budget: int = 64  # latent search: generator calls per prompt
    use_prior: bool = True  # unCLIP: the prior (False: the text embedding itself)
    temperature: float = 1.0  # token models (DALL-E, DALL-E mini): 0 takes the most likely token
    top_k: int = 0  # token models: keep the k most likely tokens (0: all)
    top_p: float = 1.0  # token models: keep the smallest set reaching this probability (1: all)
    use_cache: bool = True  # token models: the key/value cache (False: recompute the prefix each token)
    seed: int = 0
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.n < 1 or self.rerank < 1:
            raise ConfigError(f"n and rerank must be at least 1, got {self.n} and {self.rerank}")
        if self.steps < 1:
            raise ConfigError(f"steps must be at least 1, got {self.steps}")
        if self.guidance < 0:
            raise ConfigError(f"guidance must be at least 0, got {self.guidance}")
        if self.search not in ("none", "random", "ga", "grad"):
            raise ConfigError(f"search must be none, random, ga or grad, got {self.search!r}")
        if self.search != "none" and self.rerank > 1:
            raise ConfigError("give either rerank or a latent search (its budget already ranks its draws)")
        if self.search != "none" and self.budget < self.n:
            raise ConfigError(f"budget {self.budget} is fewer generator calls than the {self.n} images asked")
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ConfigError(f"temperature and top_k must be at least 0 and top_p in (0, 1] (1: all), got "
                              f"{self.temperature}, {self.top_k} and {self.top_p}")


#: The options a diffusion model's ``generate`` reads; other generators name theirs in ``sampling_keys``.
DIFFUSION_KEYS = ("steps", "sampler", "guidance", "eta")


def check_prompts(model: Any, prompts: list[str]) -> list[str]:
    """Refuse empty prompts; warn about prompts the CLIP's context cuts."""
    clean = [" ".join(p.split()) for p in prompts]
    for i, p in enumerate(clean):
        if not p:
            raise ConfigError(f"prompt {i + 1} is empty")
    tok = getattr(model.clip, "tokenizer", None)
    if tok is not None and hasattr(tok, "encode"):
        for p in clean:
            if len(tok.encode(p)) + 2 > tok.context_length:
                log.warning(f"the prompt {p[:40]!r}... is longer than the CLIP's {tok.context_length} tokens and is "
                            "cut")
    return clean


@torch.no_grad()
def sample_prompts(model: Any, prompts: list[str], options: SampleOptions | None = None,
                   rerank_clip: Any = None, progress: bool = False) -> dict[str, Any]:
    """``images``: uint8 [P, n, 3, H, W] for P prompts; ``scores``: the re-ranking CLIP's cosine of
    each kept image with its prompt (``None`` without re-ranking)."""
    from clipforge.utils.progress import progress_bar

    o = options or SampleOptions()
    prompts = check_prompts(model, prompts)
    if o.search != "none":
        return search_prompts(model, prompts, o, rerank_clip, progress)
    draw = o.n * o.rerank
    rows = [p for p in prompts for _ in range(draw)]
    g = torch.Generator().manual_seed(o.seed)
    kwargs = {k: getattr(o, k) for k in getattr(model, "sampling_keys", DIFFUSION_KEYS)}
    chunks = []
    with progress_bar("generate", total=(len(rows) + o.batch_size - 1) // o.batch_size, enabled=progress) as bar:
        for i in range(0, len(rows), o.batch_size):
            chunks.append(to_uint8(model.generate(rows[i : i + o.batch_size], generator=g, **kwargs)["images"]).cpu())
            bar.advance()
    images = torch.cat(chunks).view(len(prompts), draw, *chunks[0].shape[1:])
    if o.rerank == 1:
        return {"images": images, "scores": None}
    clip = rerank_clip if rerank_clip is not None else model.clip
    text = embed_texts(clip, prompts)
    feats = embed_pixels(clip, images.flatten(0, 1)).view(len(prompts), draw, -1)
    sims = (feats * text[:, None]).sum(-1)
    best = sims.topk(o.n, dim=1).indices
    kept = torch.stack([images[p, best[p]] for p in range(len(prompts))])
    return {"images": kept, "scores": torch.gather(sims, 1, best)}


def search_prompts(model: Any, prompts: list[str], options: SampleOptions, guide_clip: Any = None,
                   progress: bool = False) -> dict[str, Any]:
    """:func:`sample_prompts` by CLIP-guided latent search (``options.search``): per prompt, the ``n``
    best latents the guiding CLIP (``guide_clip``, by default the generator's own) finds within
    ``options.budget`` generator calls, rendered. ``scores`` are the guide's cosines."""
    from clipforge.generation.latent_search import SearchOptions

    if not hasattr(model, "render"):
        raise ConfigError(f"latent search needs a generator with a latent to search (ddpm or a GAN), not "
                          f"{getattr(model, 'arch', type(model).__name__)}")
    o = options
    # A population of a quarter of the budget (at most 16) leaves the genetic search a few generations.
    search = SearchOptions(method=o.search, budget=o.budget, batch_size=o.batch_size,  # type: ignore[arg-type]
                           population=max(4, min(16, o.budget // 4)) if o.budget >= 4 else o.budget,
                           elite=min(2, o.budget - 1))
    guide = guide_clip if guide_clip is not None else model.clip
    g = torch.Generator().manual_seed(o.seed)
    flags = [(p, p.requires_grad) for m in (model, guide) for p in m.parameters()]
    for p, _ in flags:  # gradients reach the latents only
        p.requires_grad_(False)
    try:
        return _search_each(model, prompts, o, search, guide, g, progress)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _search_each(model: Any, prompts: list[str], o: SampleOptions, search: Any, guide: Any, g: torch.Generator,
                 progress: bool) -> dict[str, Any]:
    from clipforge.generation.latent_search import clip_scorer, search_latents
    from clipforge.utils.progress import progress_bar

    images, scores = [], []
    with progress_bar(f"search ({o.search})", total=len(prompts), enabled=progress) as bar:
        for prompt in prompts:
            cond = model.condition([prompt])
            score = clip_scorer(guide, embed_texts(guide, [prompt]))

            def render(z: torch.Tensor, cond: Any = cond) -> torch.Tensor:
                return model.render(z, cond, steps=o.steps, guidance=o.guidance)

            found = search_latents(render, score, lambda k: model.draw_latents(k, g), o.n, search, generator=g)
            with torch.no_grad():
                images.append(to_uint8(render(found["latents"])).cpu())
            scores.append(found["scores"])
            bar.advance()
    return {"images": torch.stack(images), "scores": torch.stack(scores)}
