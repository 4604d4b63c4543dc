"""The iterative decoder: a language model proposes, CLIP chooses (no training beyond the LM).

At each step every live hypothesis is extended by the language model's ``candidates`` likeliest
next tokens; each extension is scored by

    score = lm_weight * (mean log p of its tokens) + clip_weight * cos(CLIP(image), CLIP(text so far))

and the ``beams`` best are kept; a hypothesis that ends (end token) is set aside with its score.
This is sentence-level re-ranking inside the beam, as ZeroCap/MAGIC-style decoders guide an
unconditional LM with CLIP (Tewel et al. 2022; Su et al. 2022), without their gradient updates.
The CLIP guiding it must not be the one that judges its captions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from clipforge.captioning.clip_link import ClipLinked
from clipforge.captioning.lm import CausalLM, LMConfig
from clipforge.config import build_config
from clipforge.errors import ConfigError
from clipforge.models.generation import GenerationConfig


@dataclass(frozen=True)
class IterativeConfig:
    lm: LMConfig = field(default_factory=LMConfig)
    candidates: int = 8  # next tokens tried per hypothesis
    beams: int = 4  # hypotheses kept
    lm_weight: float = 1.0
    clip_weight: float = 4.0
    start_id: int = 0
    end_id: int = 0
    pad_id: int = 0
    clip_dim: int = 512
    clip_path: str = ""
    clip_fingerprint: str = ""

    def __post_init__(self) -> None:
        if self.candidates < 1 or self.beams < 1:
            raise ConfigError("candidates and beams must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IterativeConfig:
        return build_config(cls, dict(d), "", strict=True)


class IterativeCaptioner(ClipLinked):
    """A caption language model and the CLIP that steers it (see the module docstring)."""

    arch = "iterative_captioner"

    def __init__(self, config: IterativeConfig) -> None:
        super().__init__()
        self.config = config
        self.lm = CausalLM(config.lm)

    @torch.no_grad()
    def _text_features(self, texts: list[str]) -> torch.Tensor:
        clip = self.clip
        tokens = clip.tokenizer(texts).to(next(clip.parameters()).device)
        return F.normalize(clip.encode_text(tokens), dim=-1)

    @torch.no_grad()
    def _caption_one(self, image_feature: torch.Tensor, max_len: int, min_len: int) -> list[int]:
        cfg = self.config
        device = next(self.parameters()).device
        live = [([cfg.start_id], 0.0)]  # (ids, summed log p)
        done: list[tuple[float, list[int]]] = []
        for t in range(max_len):
            ids = torch.tensor([h[0] for h in live], device=device)
            logp = torch.log_softmax(self.lm(self.lm.embed(ids))[:, -1].float(), dim=-1)
            if t < min_len:
                logp[:, cfg.end_id] = float("-inf")
            top, tok = logp.topk(cfg.candidates, dim=-1)
            ext = [(h[0] + [int(k)], h[1] + float(v)) for h, vs, ks in zip(live, top, tok) for v, k in zip(vs, ks)
                   if float(v) > float("-inf")]
            texts = [self.tokenizer.decode([i for i in e[0][1:] if i not in (cfg.end_id, cfg.pad_id)]) for e in ext]
            sims = self._text_features(texts) @ image_feature.to(device)
            scores = [cfg.lm_weight * lp / (len(ids_) - 1) + cfg.clip_weight * float(s)
                      for (ids_, lp), s in zip(ext, sims)]
            ranked = sorted(zip(scores, ext), key=lambda x: -x[0])
            live = []
            for score, (ids_, lp) in ranked:
                if ids_[-1] == cfg.end_id:
                    done.append((score, ids_))
                elif len(live) < cfg.beams:
                    live.append((ids_, lp))
            if not live or (len(done) >= cfg.beams and max(s for s, _ in done) >= ranked[0][0]):
                break
        if done:
            return max(done)[1]
        return max(live, key=lambda h: h[1] / len(h[0]))[0] + [cfg.end_id]  # out of length: the best, ended

    @torch.no_grad()
    def generate(self, images: torch.Tensor, config: GenerationConfig | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Captions of preprocessed ``images`` (``config``: only max_len and min_len apply; the search is
        this decoder's own) and the CLIP's normalised ``image_features``."""
        cfg = config or GenerationConfig()
        feats = self.image_features(images)
        room = self.config.lm.context_length - 1
        rows = [self._caption_one(f, min(cfg.max_len, room), min(cfg.min_len, room)) for f in feats]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [self.config.pad_id] * (width - len(r)) for r in rows])
        return {"ids": ids, "image_features": feats}
