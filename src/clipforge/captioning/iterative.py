"""The iterative decoder: a language model proposes, CLIP chooses (no training beyond the LM).

Two searches (``search``):

* ``rerank``: sentence-level re-ranking inside a beam. Every live hypothesis is extended by the
  language model's ``candidates`` likeliest next tokens; each extension is scored by

      score = lm_weight * (mean log p of its tokens) + clip_weight * cos(CLIP(image), CLIP(text so far))

  and the ``beams`` best are kept; a hypothesis that ends (end token) is set aside with its score.
* ``magic``: MAGIC's token-level guidance (Su et al. 2022, "Language Models Can See", eq. 3),
  greedy: among the k = ``candidates`` likeliest next tokens V(k), take

      argmax_v (1 - alpha) p(v | x<t) - alpha max_j cos(h_v, h_xj) + beta softmax_V(k)(CLIP(I, [x<t, v]))

  where the middle term is SimCTG's degeneration penalty on the language model's last hidden states
  h (it keeps the caption from repeating itself) and the last is CLIP's scaled image-text
  similarity of each candidate text, normalised over the k candidates (``magic_alpha``,
  ``magic_beta``: the paper's 0.1 and 2.0).

Both guide an unconditional LM with CLIP, as ZeroCap/MAGIC do, without ZeroCap's gradient updates.
The CLIP guiding it must not be the one that judges its captions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from clipforge.captioning.hf_lm import HFLMConfig
from clipforge.captioning.lm import LMConfig, build_lm
from clipforge.config import StoredConfig
from clipforge.errors import ConfigError
from clipforge.models.clip_linked import ClipLinked
from clipforge.models.generation import GenerationConfig


@dataclass(frozen=True)
class IterativeConfig(StoredConfig):
    lm: LMConfig | HFLMConfig = field(default_factory=LMConfig)
    candidates: int = 8  # next tokens tried per hypothesis
    beams: int = 4  # hypotheses kept
    lm_weight: float = 1.0
    clip_weight: float = 4.0
    search: Literal["rerank", "magic"] = "rerank"
    magic_alpha: float = 0.1  # degeneration penalty (MAGIC: 0.1)
    magic_beta: float = 2.0  # CLIP guidance (MAGIC: 2.0)
    start_id: int = 0
    end_id: int = 0
    pad_id: int = 0
    clip_dim: int = 512
    clip_path: str = ""
    clip_fingerprint: str = ""

    def __post_init__(self) -> None:
        if self.candidates < 1 or self.beams < 1:
            raise ConfigError("candidates and beams must be at least 1")



class IterativeCaptioner(ClipLinked):
    """A caption language model and the CLIP that steers it (see the module docstring)."""

    arch = "iterative_captioner"

    def __init__(self, config: IterativeConfig, lm: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        self.lm = lm if lm is not None else build_lm(config.lm)

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
            sims = self.text_features(texts) @ image_feature.to(device)
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
    def _magic(self, image_features: torch.Tensor, max_len: int, min_len: int) -> list[list[int]]:
        """MAGIC search (module docstring), batched over images."""
        cfg = self.config
        device = next(self.parameters()).device
        feats = image_features.to(device)
        b, k = len(feats), cfg.candidates
        scale = float(self.clip.logit_scale.exp()) if hasattr(self.clip, "logit_scale") else 100.0
        ids = torch.full((b, 1), cfg.start_id, dtype=torch.long, device=device)
        done = torch.zeros(b, dtype=torch.bool, device=device)
        for t in range(max_len):
            probs = torch.softmax(self.lm(self.lm.embed(ids))[:, -1].float(), dim=-1)
            if t < min_len:
                probs[:, cfg.end_id] = 0.0
            top_p, top_v = probs.topk(k, dim=-1)  # [B, k]
            cand = torch.cat([ids.repeat_interleave(k, dim=0), top_v.reshape(-1, 1)], dim=1)  # [B*k, T+1]
            _, hidden = self.lm.forward_hidden(self.lm.embed(cand))
            hidden = F.normalize(hidden.float(), dim=-1)
            penalty = (hidden[:, :-1] @ hidden[:, -1:].transpose(1, 2)).squeeze(-1).max(dim=-1).values.view(b, k)
            texts = [self.tokenizer.decode([i for i in row[1:] if i not in (cfg.end_id, cfg.pad_id)])
                     for row in cand.tolist()]
            sims = (self.text_features(texts).view(b, k, -1) @ feats[:, :, None]).squeeze(-1)
            score = (1 - cfg.magic_alpha) * top_p - cfg.magic_alpha * penalty \
                + cfg.magic_beta * torch.softmax(scale * sims, dim=-1)
            nxt = top_v.gather(1, score.argmax(-1, keepdim=True)).squeeze(1)
            nxt = torch.where(done, torch.full_like(nxt, cfg.pad_id), nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done |= nxt == cfg.end_id
            if bool(done.all()):
                break
        rows = []
        for row in ids.tolist():
            row = row[: row.index(cfg.end_id, 1) + 1] if cfg.end_id in row[1:] else row + [cfg.end_id]
            rows.append(row)
        return rows

    @torch.no_grad()
    def generate(self, images: torch.Tensor, config: GenerationConfig | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Captions of preprocessed ``images`` (``config``: only max_len and min_len apply; the search is
        this decoder's own) and the CLIP's normalised ``image_features``."""
        cfg = config or GenerationConfig()
        feats = self.image_features(images)
        room = self.config.lm.context_length - 1
        max_len, min_len = min(cfg.max_len, room), min(cfg.min_len, room)
        if self.config.search == "magic":
            rows = self._magic(feats, max_len, min_len)
        else:
            rows = [self._caption_one(f, max_len, min_len) for f in feats]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [self.config.pad_id] * (width - len(r)) for r in rows])
        return {"ids": ids, "image_features": feats}
