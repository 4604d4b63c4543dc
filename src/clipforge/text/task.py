"""Sentence-encoder training as tasks of the engine.

* :class:`ContrastiveTextTask`: the multiple-negatives ranking loss over (anchor, positive[, hard
  negative]) rows, every other row's positive (and hard negative) a negative; on raw sentences the
  positive is the same sentence encoded again, with a different dropout mask (unsupervised SimCSE,
  Gao et al. 2021, section 3).
* :class:`MLMNSPTask`: BERT's pretraining (Devlin et al. 2019, section 3.1): masked language
  modelling (15% of tokens: 80% [MASK], 10% a random token, 10% unchanged) plus next-sentence
  prediction, a binary classifier of whether B follows A (half the pairs keep their B, half get
  another row's).

Dropout makes two passes over one batch differ, so these tasks take whole batches (no
``micro_batch_size``); in-batch negatives are each rank's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from clipforge.data.sampler import epoch_batches, steps_per_epoch
from clipforge.engine.distributed import DistInfo
from clipforge.engine.schedule import param_groups
from clipforge.engine.task import Task
from clipforge.losses.multiple_negatives import multiple_negatives_ranking_loss
from clipforge.models.sentence_encoder import SentenceEncoder
from clipforge.text.data import TextData


class _TextTask(Task):
    """What both tasks share: deterministic, resumable, rank-sharded batches of row indices; AdamW
    over ``model`` (put in train mode: a loaded model comes in eval mode, and SimCSE's views need
    dropout); the evaluation and saving of ``encoder``, the run's product."""

    def __init__(self, model: nn.Module, encoder: SentenceEncoder, data: TextData, batch_size: int, lr: float,
                 weight_decay: float, seed: int, info: DistInfo, device: torch.device, evaluate_fn: Any) -> None:
        self.model, self.encoder = model.train(), encoder
        self.data, self.batch_size, self.seed, self.info, self.device = data, batch_size, seed, info, device
        self.optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr)
        self.evaluate_fn = evaluate_fn
        self.evaluate_at_end = evaluate_fn is not None

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"main": self.optimizer}

    def step_generator(self, batch: list[int]) -> torch.Generator:
        """Dropout masks (the global generator) and the task's own draws as a function of the seed and
        the batch, so a resumed run draws what an uninterrupted one would."""
        seed = self.seed * 1_000_003 + sum(batch) * 31 + len(batch) + batch[0]
        torch.manual_seed(seed)
        return torch.Generator().manual_seed(seed + 1)

    def evaluate(self, epoch: int, last: bool) -> dict[str, Any]:
        return self.evaluate_fn(self.encoder) if (self.evaluate_fn and last) else {}

    def save_final(self, run_dir: Path) -> Path:
        from clipforge.checkpoints.sentence_transformers import save_sentence_encoder

        return save_sentence_encoder(self.encoder, run_dir / "model")

    def steps_per_epoch(self) -> int:
        return steps_per_epoch(len(self.data), self.batch_size)

    def batches(self, epoch: int, start: int) -> list[list[int]]:
        return epoch_batches(len(self.data), self.batch_size, self.seed, epoch, self.info.rank,
                             self.info.world_size, start)


class ContrastiveTextTask(_TextTask):
    def __init__(self, model: SentenceEncoder, data: TextData, *, batch_size: int, lr: float, weight_decay: float,
                 scale: float, symmetric: bool, hard_negatives: bool, seed: int, info: DistInfo,
                 device: torch.device, anchor_prompt: str | None = None, positive_prompt: str | None = None,
                 evaluate_fn: Any = None) -> None:
        super().__init__(model, model, data, batch_size, lr, weight_decay, seed, info, device, evaluate_fn)
        self.scale, self.symmetric = scale, symmetric
        self.use_negatives = hard_negatives and data.negatives is not None
        self.anchor_prompt, self.positive_prompt = anchor_prompt, positive_prompt

    def training_step(self, batch: list[int], ctx: Any) -> dict[str, Any]:
        self.step_generator(batch)
        d, m = self.data, self.model
        anchors = [d.anchors[i] for i in batch]
        positives = [d.positives[i] for i in batch] if d.positives is not None else anchors  # SimCSE: dropout views
        with ctx.autocast():
            a = m.embed(anchors, self.anchor_prompt)
            p = m.embed(positives, self.positive_prompt if d.is_pairs else self.anchor_prompt)
            n = m.embed([d.negatives[i] for i in batch], self.positive_prompt)[:, None] if self.use_negatives else None
        loss = multiple_negatives_ranking_loss(a, p, n, scale=self.scale, symmetric=self.symmetric)
        return {"loss": loss}


def mask_tokens(input_ids: torch.Tensor, special: torch.Tensor, mask_id: int, vocab_size: int, probability: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: (inputs, labels) with labels -100 where nothing is predicted. ``special``
    marks tokens never masked ([CLS], [SEP], padding)."""
    labels = input_ids.clone()
    chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & ~special
    labels[~chosen] = -100
    inputs = input_ids.clone()
    roll = torch.rand(input_ids.shape, generator=generator)
    inputs[chosen & (roll < 0.8)] = mask_id
    randomised = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[randomised] = torch.randint(vocab_size, input_ids.shape, generator=generator)[randomised]
    return inputs, labels


def nsp_pairs(data: TextData, batch: list[int],
              generator: torch.Generator) -> tuple[list[str], list[str], torch.Tensor]:
    """(A, B, label) with label 0 when B is A's own next sentence and 1 when it is another row's
    (transformers' convention); exactly half of a batch (rounded down) is replaced."""
    n = len(batch)
    firsts = [data.anchors[i] for i in batch]
    seconds = [data.positives[i] for i in batch] if data.positives is not None else firsts
    replaced = torch.zeros(n, dtype=torch.long)
    replaced[torch.randperm(n, generator=generator)[: n // 2]] = 1
    total = len(data)
    out = []
    for j, i in enumerate(batch):
        if replaced[j]:
            k = int(torch.randint(total - 1, (1,), generator=generator))
            k += k >= i  # any row but this one
            out.append(data.positives[k] if data.positives is not None else data.anchors[k])
        else:
            out.append(seconds[j])
    return firsts, out, replaced


class MLMNSPTask(_TextTask):
    """``pretraining`` is a transformers ``BertForPreTraining``; the run's product is its encoder
    (``pretraining.bert``) as a mean-pooled :class:`SentenceEncoder`."""

    def __init__(self, pretraining: nn.Module, encoder: SentenceEncoder, data: TextData, *, batch_size: int,
                 lr: float, weight_decay: float, mlm_probability: float, seed: int, info: DistInfo,
                 device: torch.device, evaluate_fn: Any = None) -> None:
        super().__init__(pretraining, encoder, data, batch_size, lr, weight_decay, seed, info, device, evaluate_fn)
        self.mlm_probability = mlm_probability

    def training_step(self, batch: list[int], ctx: Any) -> dict[str, Any]:
        g = self.step_generator(batch)
        tok = self.encoder.tokenizer
        firsts, seconds, nsp_labels = nsp_pairs(self.data, batch, g)
        enc = tok(firsts, seconds, padding=True, truncation=True, max_length=self.encoder.config.max_length,
                  return_tensors="pt", return_special_tokens_mask=True)
        special = enc["special_tokens_mask"].bool() | (enc["attention_mask"] == 0)
        inputs, labels = mask_tokens(enc["input_ids"], special, tok.mask_token_id, len(tok), self.mlm_probability, g)
        with ctx.autocast():
            out = self.model(input_ids=inputs.to(self.device), attention_mask=enc["attention_mask"].to(self.device),
                             token_type_ids=enc["token_type_ids"].to(self.device))
        mlm = nn.functional.cross_entropy(out.prediction_logits.float().flatten(0, 1), labels.to(self.device).flatten(),
                                          ignore_index=-100)
        nsp = nn.functional.cross_entropy(out.seq_relationship_logits.float(), nsp_labels.to(self.device))
        return {"loss": mlm + nsp, "mlm": mlm.detach(), "nsp": nsp.detach()}
