"""Noise-contrastive estimation (Gutmann & Hyvärinen 2010; Mnih & Teh 2012) and word2vec's
negative sampling (Mikolov et al. 2013), its simplified form.

NCE classifies each data sample against k noise samples drawn from q. With the model's score s(x)
(an unnormalised log-probability) the posterior of "data" is sigma(s(x) - log(k q(x))), and

    L = -log sigma(s(x) - log k q(x)) - sum_{y ~ q} log sigma(-(s(y) - log k q(y))).

Negative sampling drops the log k q correction: L = -log sigma(s(x)) - sum_y log sigma(-s(y)),
with s the dot product of a centre word's input vector and a context word's output vector.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def nce_loss(data_scores: torch.Tensor, noise_scores: torch.Tensor, data_noise_logprob: torch.Tensor,
             noise_noise_logprob: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Args:
    data_scores: [N] model scores of the data samples.
    noise_scores: [N, k] model scores of the noise samples drawn for each.
    data_noise_logprob: [N] log q(x) of the data samples under the noise distribution.
    noise_noise_logprob: [N, k] log q(y) of the noise samples.
    """
    k = noise_scores.shape[-1]
    log_k = math.log(k)
    pos = F.logsigmoid(data_scores - (log_k + data_noise_logprob))
    neg = F.logsigmoid(-(noise_scores - (log_k + noise_noise_logprob))).sum(dim=-1)
    losses = -(pos + neg)
    return losses.mean() if reduction == "mean" else losses.sum() if reduction == "sum" else losses


def negative_sampling_loss(center: torch.Tensor, context: torch.Tensor, negatives: torch.Tensor,
                           reduction: str = "mean") -> torch.Tensor:
    """Skip-gram negative sampling. center [N, D] (input vectors), context [N, D] (output vectors
    of the true context words), negatives [N, k, D] (output vectors of sampled noise words)."""
    pos = F.logsigmoid((center * context).sum(-1))
    neg = F.logsigmoid(-torch.einsum("nd,nkd->nk", center, negatives)).sum(-1)
    losses = -(pos + neg)
    return losses.mean() if reduction == "mean" else losses.sum() if reduction == "sum" else losses
