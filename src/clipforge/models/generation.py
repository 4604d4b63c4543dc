"""Autoregressive decoding for every text decoder: greedy, beam search and sampling, batched, with
a key/value cache.

A decoder is anything with ``step(ids, cache) -> logits``: given the token ids not yet seen by the
cache (the whole prompt first, then one token per call) it returns the logits of the last position,
[B, vocab], and extends the cache. ``cache`` is a :class:`KVCache` (or ``None`` to recompute the
whole sequence every step, for the speed comparison and for decoders without one).

The options follow Hugging Face's ``generate`` (what open_clip's CoCa users know): ``temperature``,
``top_k``, ``top_p`` (nucleus), ``repetition_penalty`` (CTRL's: a seen token's positive logit is
divided by it, a negative one multiplied), ``min_len`` (the end token is forbidden before),
``max_len`` (tokens generated after the prompt), stop at ``eos``; finished rows are padded.
Beam search keeps ``num_beams`` hypotheses per row and scores finished ones by their summed log
probability divided by length ** ``length_penalty``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

Step = Callable[[torch.Tensor, "KVCache | None"], torch.Tensor]


@dataclass
class KVCache:
    """Per-layer keys and values of the positions decoded so far, and per-layer keys and values of a
    fixed context (cross-attention to image tokens), both reordered together when beams move."""

    layers: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    static: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    length: int = 0  # positions held (the next token's position)
    external: Any = None  # a library's own cache (Hugging Face's), reordered with its reorder_cache

    def append(self, name: str, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add this step's [B, H, T, Dh] keys and values to layer ``name``; returns all of them."""
        if name in self.layers:
            pk, pv = self.layers[name]
            k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
        self.layers[name] = (k, v)
        return k, v

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (beam search: each surviving hypothesis's parent)."""
        self.layers = {n: (k.index_select(0, index), v.index_select(0, index)) for n, (k, v) in self.layers.items()}
        self.static = {n: (k.index_select(0, index), v.index_select(0, index)) for n, (k, v) in self.static.items()}
        if self.external is not None:
            self.external.reorder_cache(index)


@dataclass(frozen=True)
class GenerationConfig:
    strategy: Literal["greedy", "beam", "sample"] = "greedy"
    max_len: int = 30  # new tokens at most
    min_len: int = 0  # new tokens before the end token is allowed
    num_beams: int = 4
    length_penalty: float = 1.0
    temperature: float = 1.0
    top_k: int = 0  # 0: no limit
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        from clipforge.errors import ConfigError

        if self.strategy not in ("greedy", "beam", "sample"):
            raise ConfigError(f"strategy must be greedy, beam or sample, got {self.strategy!r}")
        if self.max_len < 1 or self.min_len < 0 or self.min_len > self.max_len:
            raise ConfigError(f"need 0 <= min_len <= max_len and max_len >= 1, got {self.min_len}, {self.max_len}")
        if self.num_beams < 1 or self.temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0 \
                or self.repetition_penalty <= 0:
            raise ConfigError("num_beams >= 1, temperature > 0, 0 < top_p <= 1, top_k >= 0 and "
                              "repetition_penalty > 0 are required")


def fit_to(config: GenerationConfig, room: int) -> GenerationConfig:
    """``config`` with ``max_len`` and ``min_len`` cut to the ``room`` a decoder's positions leave."""
    from dataclasses import replace

    return replace(config, max_len=min(config.max_len, room), min_len=min(config.min_len, room))


def _adjust(logits: torch.Tensor, ids: torch.Tensor, generated: int, cfg: GenerationConfig, eos: int) -> torch.Tensor:
    """The repetition penalty and the minimum length, applied to [B, V] logits of rows ``ids``."""
    logits = logits.float()
    if cfg.repetition_penalty != 1.0:
        seen = torch.gather(logits, 1, ids)
        seen = torch.where(seen > 0, seen / cfg.repetition_penalty, seen * cfg.repetition_penalty)
        logits = logits.scatter(1, ids, seen)
    if generated < cfg.min_len:
        logits[:, eos] = float("-inf")
    return logits


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k then nucleus filtering: the rest get -inf."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # Drop a token once the tokens before it already cover top_p (the first is always kept).
        drop = probs.cumsum(-1) - probs > top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


@torch.no_grad()
def generate(step: Step, prompt: torch.Tensor, eos: int, pad: int = 0, config: GenerationConfig | None = None,
             use_cache: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Continue ``prompt`` [B, L0] (e.g. the start token); returns [B, L0 + n] ids, n <= max_len,
    padded with ``pad`` after each row's end token."""
    cfg = config or GenerationConfig()
    if cfg.strategy == "beam" and cfg.num_beams > 1:
        return _beam(step, prompt, eos, pad, cfg, use_cache)
    ids = prompt
    done = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
    cache = KVCache() if use_cache else None
    new = ids
    for t in range(cfg.max_len):
        logits = _adjust(step(new if use_cache else ids, cache), ids, t, cfg, eos)
        if cfg.strategy == "sample":
            probs = filter_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            nxt = logits.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        done |= nxt == eos
        new = nxt[:, None]
        if bool(done.all()):
            break
    return ids


def _beam(step: Step, prompt: torch.Tensor, eos: int, pad: int, cfg: GenerationConfig,
          use_cache: bool) -> torch.Tensor:
    b, nb = len(prompt), cfg.num_beams
    ids = prompt.repeat_interleave(nb, dim=0)  # [B*nb, L]
    scores = torch.zeros(b, nb, device=prompt.device)
    scores[:, 1:] = float("-inf")  # all beams start identical: expand from the first only
    cache = KVCache() if use_cache else None
    new = ids
    finished: list[list[tuple[float, torch.Tensor]]] = [[] for _ in range(b)]
    for t in range(cfg.max_len):
        logits = _adjust(step(new if use_cache else ids, cache), ids, t, cfg, eos)
        logp = F.log_softmax(logits, dim=-1)  # [B*nb, V]
        vocab = logp.shape[-1]
        total = (scores.view(-1, 1) + logp).view(b, nb * vocab)
        top, flat = total.topk(2 * nb, dim=1)  # room for the hypotheses that end here
        parent, token = flat // vocab, flat % vocab
        keep_scores = torch.full((b, nb), float("-inf"), device=ids.device)
        keep_parent = torch.zeros(b, nb, dtype=torch.long, device=ids.device)
        keep_token = torch.full((b, nb), pad, dtype=torch.long, device=ids.device)
        for i in range(b):
            j = 0
            for s, p, tok in zip(top[i].tolist(), parent[i].tolist(), token[i].tolist()):
                if s == float("-inf"):
                    break
                if tok == eos:
                    seq = torch.cat([ids[i * nb + p], ids.new_tensor([eos])])
                    finished[i].append((s / (t + 1) ** cfg.length_penalty, seq))
                    continue
                if j < nb:
                    keep_scores[i, j], keep_parent[i, j], keep_token[i, j] = s, p, tok
                    j += 1
        rows = (torch.arange(b, device=ids.device)[:, None] * nb + keep_parent).view(-1)
        ids = torch.cat([ids.index_select(0, rows), keep_token.view(-1, 1)], dim=1)
        scores = keep_scores
        if cache is not None:
            cache.reorder(rows)
        new = keep_token.view(-1, 1)
        # A row is done once its best finished hypothesis beats what its live beams can still reach
        # (their scores only fall, and their length normalisation is at most this step's).
        if all(len(f) >= nb and max(s for s, _ in f) >= scores[i].max().item() / (t + 1) ** cfg.length_penalty
               for i, f in enumerate(finished)):
            break
    out = []
    for i in range(b):
        steps = ids.shape[1] - prompt.shape[1]
        live = [(scores[i, j].item() / steps ** cfg.length_penalty, ids[i * nb + j]) for j in range(nb)
                if scores[i, j] > float("-inf")]
        best = max(finished[i] + live, key=lambda x: x[0])[1]
        out.append(best)
    width = max(len(s) for s in out)
    return torch.stack([F.pad(s, (0, width - len(s)), value=pad) for s in out])
