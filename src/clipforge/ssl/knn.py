"""Weighted k-nearest-neighbour accuracy on frozen features, as lightly and solo-learn report it
(Wu et al. 2018): cosine similarity, the k = 200 nearest training samples vote for their class with
weight exp(similarity / T), T = 0.1."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 k: int = 200, temperature: float = 0.1, n_classes: int | None = None, block: int = 1024) -> float:
    train_x, test_x = F.normalize(train_x.float(), dim=-1), F.normalize(test_x.float(), dim=-1)
    n_classes = n_classes or int(max(train_y.max(), test_y.max())) + 1
    k = min(k, len(train_x))
    correct = 0
    for s in range(0, len(test_x), block):
        sims, idx = (test_x[s : s + block] @ train_x.T).topk(k, dim=1)
        votes = torch.zeros(len(idx), n_classes)
        votes.scatter_add_(1, train_y[idx], (sims / temperature).exp())
        correct += int((votes.argmax(dim=1) == test_y[s : s + block]).sum())
    return correct / max(1, len(test_x))
