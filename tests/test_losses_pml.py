"""Parity with pytorch-metric-learning: every value in pml_reference.json to 1e-9 (float64)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from clipforge.losses import (
    ContrastivePairLoss,
    MarginLoss,
    TripletMarginLoss,
    clip_loss,
    info_nce,
    nca,
    nt_xent,
    semihard_triplets,
    supcon,
    supervised_nt_xent,
)
from conftest import PEERS

REF = json.loads((PEERS / "losses" / "pml_reference.json").read_text())
E = torch.tensor(REF["inputs"]["E"], dtype=torch.float64)
V2 = torch.tensor(REF["inputs"]["V2"], dtype=torch.float64)
Y = torch.tensor(REF["inputs"]["labels"])
V = REF["values"]


def _check(key: str, value: torch.Tensor) -> None:
    assert value.dtype == torch.float64
    assert abs(value.item() - V[key]) < 1e-9, (key, value.item(), V[key])


@pytest.mark.parametrize(("key", "kwargs"), [
    ("contrastive_pair l2 pos_margin=0 neg_margin=1 reduce=mean_nonzero", dict(pos_margin=0, neg_margin=1)),
    ("contrastive_pair l2 pos_margin=0.2 neg_margin=0.8 reduce=mean_nonzero", dict(pos_margin=0.2, neg_margin=0.8)),
    ("contrastive_pair cosine pos_margin=1 neg_margin=0 reduce=mean_nonzero",
     dict(pos_margin=1, neg_margin=0, distance="cosine")),
    ("contrastive_pair l2 pos_margin=0 neg_margin=1 reduce=mean", dict(pos_margin=0, neg_margin=1, reduction="mean")),
])
def test_contrastive_pair(key, kwargs) -> None:
    _check(key, ContrastivePairLoss(**kwargs)(E, Y))


@pytest.mark.parametrize(("key", "kwargs"), [
    ("triplet l2 margin=0.05 all_triplets reduce=mean_nonzero", dict(margin=0.05)),
    ("triplet l2 margin=0.2 all_triplets reduce=mean_nonzero", dict(margin=0.2)),
    ("triplet l2 margin=0.2 swap all_triplets reduce=mean_nonzero", dict(margin=0.2, swap=True)),
    ("triplet l2 margin=0.2 softplus all_triplets reduce=mean_nonzero", dict(margin=0.2, softplus=True)),
    ("triplet l2 margin=0.2 all_triplets reduce=mean", dict(margin=0.2, reduction="mean")),
])
def test_triplet(key, kwargs) -> None:
    _check(key, TripletMarginLoss(**kwargs)(E, Y))


def test_triplet_semihard() -> None:
    triplets = semihard_triplets(E, Y, margin=0.2)
    _check("triplet l2 margin=0.2 semihard_triplets(margin=0.2) reduce=mean_nonzero",
           TripletMarginLoss(margin=0.2)(E, triplets=triplets))


def test_margin_wu2017() -> None:
    _check("margin_wu2017 alpha=0.2 beta=1.2 all_triplets reduce=sum_over_active_terms",
           MarginLoss(alpha=0.2, beta=1.2).double()(E, Y))
    _check("margin_wu2017 alpha=0.1 beta=1.0 all_triplets reduce=sum_over_active_terms",
           MarginLoss(alpha=0.1, beta=1.0).double()(E, Y))
    loss_fn = MarginLoss(alpha=0.2, beta=1.2, learn_beta=True, num_classes=4, nu=0.01).double()
    loss = loss_fn(E, Y)
    _check("margin_wu2017 alpha=0.2 beta=1.2 nu=0.01 per_class_beta all_triplets reduce=sum_over_active_terms", loss)
    loss.backward()
    expected = torch.tensor(V["margin_wu2017 ... per_class_beta: d loss / d beta"], dtype=torch.float64)
    torch.testing.assert_close(loss_fn.beta.grad, expected, atol=1e-9, rtol=0)


@pytest.mark.parametrize("t", [0.07, 0.5])
def test_supervised_ntxent(t) -> None:
    _check(f"supervised_ntxent cosine t={t} (other positives not in denominator) mean_over_pos_pairs",
           supervised_nt_xent(E, Y, temperature=t))


def test_simclr_infonce_clip() -> None:
    _check("simclr_ntxent two views E,V2 t=0.5 (2N samples)", nt_xent(E, V2, temperature=0.5))
    _check("infonce one direction E->V2 t=0.5", info_nce(E, V2, temperature=0.5))
    scale = torch.tensor(1 / 0.07, dtype=torch.float64)
    _check("clip_symmetric E<->V2 t=0.07", clip_loss(F.normalize(E, dim=-1), F.normalize(V2, dim=-1), scale))


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_supcon_out(t) -> None:
    _check(f"supcon L_out cosine t={t} mean_nonzero_over_anchors", supcon(E, Y, temperature=t, form="out"))


@pytest.mark.parametrize("scale", [1, 10])
def test_nca(scale) -> None:
    _check(f"nca squared_l2 scale={scale}", nca(E, Y, scale=scale))
