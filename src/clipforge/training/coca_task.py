"""CoCa with ``clipforge train``: the CLIP loss of the global batch plus the captioning loss.

loss = contrastive_weight * CLIP loss + caption_weight * next-token cross-entropy (Yu et al. 2022;
1 and 2 by default). The contrastive part couples the batch and is exact at any micro-batch size
(GradCache); the captioning part is a per-sample mean, back-propagated per micro-batch with its
share (:meth:`clipforge.engine.task.Task.embed`). Under torchrun each rank's captioning mean is
weighted by its share of the global batch, so the summed gradients are the global batch's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from clipforge.training.task import CLIPTask, ContrastiveStep, _images_tokens, at_least_fp32


class CoCaStep(ContrastiveStep):
    """CoCa's two losses on a batch of (images, tokens)."""

    def embed(self, batch: Any) -> dict[str, torch.Tensor]:
        images, tokens = _images_tokens(batch)
        image = self.model.visual.forward_tokens(images)
        text = self.model.text.forward_tokens(tokens)
        out = {"image": at_least_fp32(F.normalize(image["pooled"], dim=-1)),
               "text": at_least_fp32(F.normalize(text["pooled"], dim=-1))}
        # GradCache's graph-free first pass needs only the embeddings; a weight of 0 needs no decoder.
        if torch.is_grad_enabled() and self.model.config.caption_weight:
            logits = self.model.text_decoder(image["tokens"], text["tokens"][:, :-1])
            out["_caption"] = self.model.caption_loss(logits, tokens[:, 1:], reduction="sum")
        return out

    @property
    def local_coefficients(self) -> dict[str, float]:
        return {"caption": self.model.config.caption_weight}

    def loss_from(self, embeddings: dict[str, torch.Tensor], batch: Any) -> dict[str, Any]:
        out = super().loss_from(embeddings, batch)
        _, tokens = _images_tokens(batch)
        # The captioning loss is a mean over the global batch's caption tokens (open_clip's
        # CrossEntropyLoss(ignore_index=pad)): its sums are normalised by their count over every rank.
        count = (tokens[:, 1:] != self.model.config.pad_id).sum().to(embeddings["image"].device, torch.float64)
        if self.dist.enabled:
            import torch.distributed as dist

            dist.all_reduce(count)
        return {"loss": self.model.config.contrastive_weight * out["loss"], "contrastive": out["loss"].detach(),
                "local_norm": 1.0 / max(float(count), 1.0)}


class CoCaTask(CoCaStep, CLIPTask):
    """Everything of :class:`CLIPTask` (data, evaluation, checkpoints), with CoCa's two losses."""
