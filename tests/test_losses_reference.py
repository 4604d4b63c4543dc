"""Each loss against a slow loop written from its paper's formula; edge cases and precisions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clipforge.losses import (
    ContrastivePairLoss,
    MarginLoss,
    TripletMarginLoss,
    clip_loss,
    distance_weighted_triplets,
    hard_negative_triplets,
    info_nce,
    nca,
    nce_loss,
    negative_sampling_loss,
    nt_xent,
    siglip_loss,
    supcon,
    supervised_nt_xent,
)
from clipforge.losses.miners import distance_weights

G = torch.Generator().manual_seed(0)
X = torch.randn(10, 6, generator=G, dtype=torch.float64)
Y = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 0, 2])
U = F.normalize(X, dim=-1)


def d(i: int, j: int) -> float:
    return float((U[i] - U[j]).norm())


def cos(i: int, j: int) -> float:
    return float(U[i] @ U[j])


def pairs():
    pos = [(i, j) for i in range(10) for j in range(10) if i != j and Y[i] == Y[j]]
    neg = [(i, j) for i in range(10) for j in range(10) if Y[i] != Y[j]]
    return pos, neg


def triplets():
    return [(a, p, n) for a in range(10) for p in range(10) for n in range(10)
            if a != p and Y[a] == Y[p] and Y[n] != Y[a]]


def mean_nonzero(xs):
    nz = [x for x in xs if x > 0]
    return sum(nz) / len(nz) if nz else 0.0


def test_pair_loss_loop() -> None:
    pos, neg = pairs()
    for pm, nm in ((0.0, 1.0), (0.3, 0.9)):
        ref = mean_nonzero([max(0, d(i, j) - pm) for i, j in pos])
        ref += mean_nonzero([max(0, nm - d(i, j)) for i, j in neg])
        assert ContrastivePairLoss(pm, nm)(X, Y).item() == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize(("swap", "soft"), [(False, False), (True, False), (False, True)])
def test_triplet_loss_loop(swap, soft) -> None:
    terms = []
    for a, p, n in triplets():
        an = min(d(a, n), d(p, n)) if swap else d(a, n)
        v = d(a, p) - an + 0.1
        terms.append(math.log1p(math.exp(v)) if soft else max(0.0, v))
    got = TripletMarginLoss(0.1, swap=swap, softplus=soft)(X, Y).item()
    assert got == pytest.approx(mean_nonzero(terms), abs=1e-12)


def test_margin_loss_loop() -> None:
    alpha, beta = 0.2, 1.1
    total, active = 0.0, 0
    for a, p, n in triplets():
        pos, neg = max(0, d(a, p) - beta + alpha), max(0, beta - d(a, n) + alpha)
        total += pos + neg
        active += (pos > 0) + (neg > 0)
    assert MarginLoss(alpha, beta)(X, Y).item() == pytest.approx(total / active, abs=1e-12)


@pytest.mark.parametrize("form", ["out", "in"])
def test_supcon_loop(form) -> None:
    t = 0.3
    per = []
    for i in range(10):
        P = [p for p in range(10) if p != i and Y[p] == Y[i]]
        if not P:
            continue
        denom = sum(math.exp(cos(i, a) / t) for a in range(10) if a != i)
        if form == "out":
            per.append(-sum(math.log(math.exp(cos(i, p) / t) / denom) for p in P) / len(P))
        else:
            per.append(-math.log(sum(math.exp(cos(i, p) / t) / denom for p in P) / len(P)))
    assert supcon(X, Y, t, form=form).item() == pytest.approx(mean_nonzero(per), abs=1e-12)


def test_ntxent_loops() -> None:
    t = 0.4
    Z = F.normalize(torch.cat([X[:5], X[5:]]), dim=-1)
    terms = []
    for i in range(10):
        j = (i + 5) % 10
        denom = sum(math.exp(float(Z[i] @ Z[k]) / t) for k in range(10) if k != i)
        terms.append(-math.log(math.exp(float(Z[i] @ Z[j]) / t) / denom))
    assert nt_xent(X[:5], X[5:], t).item() == pytest.approx(sum(terms) / 10, abs=1e-12)
    pos, _ = pairs()
    sup = []
    for a, p in pos:
        negs = sum(math.exp(cos(a, n) / t) for n in range(10) if Y[n] != Y[a])
        sup.append(-math.log(math.exp(cos(a, p) / t) / (math.exp(cos(a, p) / t) + negs)))
    assert supervised_nt_xent(X, Y, t).item() == pytest.approx(sum(sup) / len(sup), abs=1e-12)


def test_info_nce_with_explicit_negatives_loop() -> None:
    q, k, negs = X[:3], X[3:6], X[6:].reshape(1, 4, 6).expand(3, 4, 6)
    t = 0.2
    qn, kn, nn_ = F.normalize(q, dim=-1), F.normalize(k, dim=-1), F.normalize(negs, dim=-1)
    ref = 0.0
    for i in range(3):
        scores = [float(qn[i] @ kn[i]) / t] + [float(qn[i] @ nn_[i, m]) / t for m in range(4)]
        ref += -scores[0] + math.log(sum(math.exp(s) for s in scores))
    assert info_nce(q, k, negs, temperature=t).item() == pytest.approx(ref / 3, abs=1e-12)


def test_siglip_loop() -> None:
    x, y = U[:4], U[4:8]
    t, b = 5.0, -2.0
    ref = 0.0
    for i in range(4):
        for j in range(4):
            z = t * float(x[i] @ y[j]) + b
            lab = 1 if i == j else -1
            ref += -math.log(1 / (1 + math.exp(-lab * z)))
    assert siglip_loss(x, y, torch.tensor(t), torch.tensor(b)).item() == pytest.approx(ref / 4, abs=1e-12)


def test_nca_loop() -> None:
    terms = []
    for i in range(10):
        w = {j: math.exp(-2.0 * d(i, j) ** 2) for j in range(10) if j != i}
        p = sum(v for j, v in w.items() if Y[j] == Y[i]) / sum(w.values())
        if p > 0:
            terms.append(-math.log(p))
    assert nca(X, Y, scale=2.0).item() == pytest.approx(sum(terms) / len(terms), abs=1e-12)


def test_nce_and_negative_sampling_loops() -> None:
    s, ns = torch.tensor([1.0, -0.5]), torch.tensor([[0.2, -1.0, 0.3], [0.0, 0.5, -0.2]])
    lq, nlq = torch.log(torch.tensor([0.1, 0.2])), torch.log(torch.tensor([[0.3, 0.1, 0.2], [0.2, 0.2, 0.1]]))
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    ref = 0.0
    for i in range(2):
        ref -= math.log(sig(float(s[i]) - math.log(3 * math.exp(float(lq[i])))))
        for m in range(3):
            ref -= math.log(1 - sig(float(ns[i, m]) - math.log(3 * math.exp(float(nlq[i, m])))))
    assert nce_loss(s, ns, lq, nlq).item() == pytest.approx(ref / 2, abs=1e-6)
    c, o, negs = X[:2], X[2:4], X[4:10].reshape(2, 3, 6)
    ref = 0.0
    for i in range(2):
        ref -= math.log(sig(float(c[i] @ o[i])))
        ref -= sum(math.log(sig(-float(c[i] @ negs[i, m]))) for m in range(3))
    assert negative_sampling_loss(c, o, negs).item() == pytest.approx(ref / 2, abs=1e-12)


# --- edge cases: no positives, no active terms ----------------------------------------------

LOSSES_WITH_LABELS = {
    "pair": lambda e, y: ContrastivePairLoss()(e, y),
    "triplet": lambda e, y: TripletMarginLoss()(e, y),
    "margin": lambda e, y: MarginLoss()(e, y),
    "supcon_out": lambda e, y: supcon(e, y),
    "supcon_in": lambda e, y: supcon(e, y, form="in"),
    "sup_ntxent": lambda e, y: supervised_nt_xent(e, y),
    "nca": lambda e, y: nca(e, y),
}


@pytest.mark.parametrize("name", list(LOSSES_WITH_LABELS))
@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [0, 0, 0, 0]], ids=["no-positives", "no-negatives"])
def test_degenerate_batches_give_zero_with_graph(name, labels) -> None:
    e = torch.randn(4, 5, requires_grad=True)
    loss = LOSSES_WITH_LABELS[name](e, torch.tensor(labels))
    assert torch.isfinite(loss)
    loss.backward()
    assert e.grad is not None and torch.isfinite(e.grad).all()


def test_no_active_terms_is_zero() -> None:
    e = torch.tensor([[1.0, 0.0], [1.0, 0.001], [-1.0, 0.0], [-1.0, 0.001]], requires_grad=True)
    y = torch.tensor([0, 0, 1, 1])
    loss = TripletMarginLoss(margin=0.1)(e, y)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(e.grad, torch.zeros_like(e))


@pytest.mark.parametrize("name", list(LOSSES_WITH_LABELS))
def test_bf16_autocast_and_float32(name) -> None:
    e = torch.randn(12, 8, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2, 3, 3, 0])
    full = LOSSES_WITH_LABELS[name](e, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = LOSSES_WITH_LABELS[name](e @ torch.eye(8), y)
    assert torch.isfinite(half)
    assert half.float().item() == pytest.approx(full.item(), rel=0.1, abs=0.05)


# --- miners ---------------------------------------------------------------------------------

def test_hard_negative_is_closest_negative() -> None:
    a, p, n = hard_negative_triplets(X, Y)
    for ai, ni in zip(a.tolist(), n.tolist()):
        others = [d(ai, j) for j in range(10) if Y[j] != Y[ai]]
        assert d(ai, ni) == pytest.approx(min(others))


def test_distance_weighted_sampling() -> None:
    # q(d) ~ d^(n-2) (1 - d^2/4)^((n-3)/2); weights are its inverse, 0 at or beyond 1.4.
    dist = torch.tensor([0.3, 0.5, 1.0, 1.39, 1.4, 1.9], dtype=torch.float64)
    w = distance_weights(dist, dim=16)
    q = lambda x: x ** 14 * (1 - x * x / 4) ** 6.5  # noqa: E731
    assert w[4] == 0 and w[5] == 0
    assert w[0] == w[1]  # clipped at the cutoff 0.5
    assert (w[1] / w[2]).item() == pytest.approx(q(1.0) / q(0.5), rel=1e-9)
    e = torch.randn(40, 16, generator=torch.Generator().manual_seed(1))
    y = torch.arange(40) % 4
    t1 = distance_weighted_triplets(e, y, generator=torch.Generator().manual_seed(5))
    t2 = distance_weighted_triplets(e, y, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(a, b) for a, b in zip(t1, t2))
    a, p, n = t1
    assert (y[a] == y[p]).all() and (y[a] != y[n]).all()
    assert (F.pairwise_distance(F.normalize(e[a]), F.normalize(e[n])) < 1.4).all()


def _reference_probabilities(u: torch.Tensor, a: int, negatives: list[int], dim: int) -> dict[int, float]:
    """Wu et al.'s 1/q(d), d clipped below at 0.5, 0 at or beyond 1.4, normalised over a's negatives (a loop)."""
    logs = {}
    for j in negatives:
        dist = float((u[a] - u[j]).norm())
        if dist >= 1.4:
            continue
        x = max(dist, 0.5)
        logs[j] = (2.0 - dim) * math.log(x) - (dim - 3) / 2.0 * math.log(1.0 - 0.25 * x * x)
    if not logs:
        return {}
    top = max(logs.values())
    total = sum(math.exp(v - top) for v in logs.values())
    return {j: math.exp(v - top) / total for j, v in logs.items()}


def _clustered(n_per: int, classes: int, dim: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(classes, dim, generator=g, dtype=torch.float64), dim=-1)
    y = torch.arange(classes).repeat_interleave(n_per)
    e = centres[y] + 0.9 * torch.randn(len(y), dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    # Pull the classes together a little so that many negatives fall below the 1.4 cutoff.
    e = e + 0.6 * centres.mean(0)
    return e.to(dtype), y


@pytest.mark.parametrize("dim", [64, 160, 256, 512, 1024, 2048])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_distance_weighted_sampling_at_any_embedding_size(dim: int, dtype: torch.dtype) -> None:
    e, y = _clustered(8, 8, dim, dtype)
    u = F.normalize(e.double(), dim=-1)
    a, p, n = distance_weighted_triplets(e, y, generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(a, minlength=len(y))
    drawable = 0
    for i in range(len(y)):
        probs = _reference_probabilities(u, i, [j for j in range(len(y)) if y[j] != y[i]], dim)
        # Every anchor with a negative below the cutoff gets one triplet per positive (7 here).
        assert counts[i] == (7 if probs else 0), (i, probs)
        drawable += bool(probs)
        for ni in n[a == i].tolist():
            assert ni in probs  # only negatives of non-zero weight are drawn
        # The probabilities are the formula's, normalised per anchor (the global maximum of the old
        # code underflowed every row at d >= 160).
        if probs:
            valid = y[:, None] != y[None, :]
            row = distance_weights(torch.cdist(u, u), dim, valid=valid)[i]
            for j, pj in probs.items():
                assert row[j].item() == pytest.approx(pj, rel=1e-6, abs=1e-12)
            assert row.sum().item() == pytest.approx(1.0)
    assert drawable >= len(y) // 2  # the test data exercises the sampler


def test_distance_weighted_draws_follow_the_probabilities() -> None:
    e, y = _clustered(4, 4, 32, torch.float64, seed=3)
    u = F.normalize(e, dim=-1)
    probs = _reference_probabilities(u, 0, [j for j in range(16) if y[j] != y[0]], 32)
    draws = torch.cat([distance_weighted_triplets(e, y, generator=torch.Generator().manual_seed(s))[2][:3]
                       for s in range(600)])  # anchor 0's three triplets each time
    freq = torch.bincount(draws, minlength=16).double() / len(draws)
    tv = 0.5 * sum(abs(freq[j].item() - probs.get(j, 0.0)) for j in range(16))
    assert tv < 0.05


@pytest.mark.parametrize("name", ["clip", "siglip", "nt_xent", "info_nce", "info_nce_neg", "tiled_clip",
                                  "tiled_siglip"])
def test_empty_batches_give_a_zero_that_keeps_the_graph(name: str) -> None:
    from clipforge.losses.tiled import tiled_clip_loss, tiled_siglip_loss

    x = torch.zeros(0, 8, requires_grad=True)
    y = torch.zeros(0, 8, requires_grad=True)
    scale = torch.tensor(10.0, requires_grad=True)
    bias = torch.tensor(-1.0, requires_grad=True)
    loss = {
        "clip": lambda: clip_loss(x, y, scale), "siglip": lambda: siglip_loss(x, y, scale, bias),
        "nt_xent": lambda: nt_xent(x, y), "info_nce": lambda: info_nce(x, y),
        "info_nce_neg": lambda: info_nce(x, y, torch.zeros(0, 3, 8)),
        "tiled_clip": lambda: tiled_clip_loss(x, y, scale),
        "tiled_siglip": lambda: tiled_siglip_loss(x, y, scale, bias),
    }[name]()
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert x.grad is not None and x.grad.shape == (0, 8)


def test_supcon_without_negatives_is_zero_as_in_pml() -> None:
    e = torch.randn(6, 5, requires_grad=True)
    same = torch.zeros(6, dtype=torch.long)
    for form in ("out", "in"):
        loss = supcon(e, same, temperature=0.07, form=form)
        assert loss.item() == 0.0  # the formula alone gives >= log(5); PML's SupConLoss gives 0
        loss.backward()


def test_triplet_swap_with_a_reference_set_uses_the_reference_distance() -> None:
    # d(p, n) between two reference rows (PML indexes its embeddings-by-reference matrix with the
    # positive's reference index there, which mixes the two sets: a documented difference).
    g = torch.Generator().manual_seed(4)
    emb, ref = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(7, 4, generator=g, dtype=torch.float64)
    yl, yr = torch.tensor([0, 1, 0, 2, 1]), torch.tensor([0, 0, 1, 1, 2, 2, 0])
    ue, ur = F.normalize(emb, dim=-1), F.normalize(ref, dim=-1)
    terms = []
    for ai in range(5):
        for pi in range(7):
            for ni in range(7):
                if yl[ai] == yr[pi] and yr[ni] != yl[ai]:
                    an = min(float((ue[ai] - ur[ni]).norm()), float((ur[pi] - ur[ni]).norm()))
                    terms.append(max(0.0, float((ue[ai] - ur[pi]).norm()) - an + 0.2))
    got = TripletMarginLoss(margin=0.2, swap=True)(emb, yl, ref_embeddings=ref, ref_labels=yr)
    assert got.item() == pytest.approx(mean_nonzero(terms), rel=1e-12)


@pytest.mark.parametrize("loss", [ContrastivePairLoss(), TripletMarginLoss(), MarginLoss()])
def test_a_reference_set_needs_its_labels(loss) -> None:
    e, y = torch.randn(4, 3), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="ref_embeddings was given without ref_labels"):
        loss(e, y, ref_embeddings=torch.randn(4, 3))
    with pytest.raises(ValueError, match="ref_labels was given without ref_embeddings"):
        loss(e, y, ref_labels=y)
