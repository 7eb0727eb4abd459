"""Reference losses vs hand-computed values and independent closed forms (method.md §5.3, §5.4, §6)."""
import math

import pytest
import torch
import torch.nn.functional as F

from skelfast.reference.losses import (concat_keys, concat_queues, context_loss, context_pair_losses, ikem_loss,
                                       info_nce, phase2_loss, relational_distill_loss)

from _ref_helpers import unit

TAU = 0.07


def lse(v):
    return torch.logsumexp(v, dim=-1)


def rand_setup(G=3, N=5, D=4, K=8, seed=0, dtype=torch.float64):
    q = unit(G, N, D, seed=seed, dtype=dtype)
    k = unit(G, N, D, seed=seed + 1, dtype=dtype)
    Q = unit(G, D, K, dim=1, seed=seed + 2, dtype=dtype)
    return q, k, Q


# ---------------------------------------------------------------- §5.3 InfoNCE
def test_info_nce_hand_computed():
    f64 = dict(dtype=torch.float64)
    q = torch.tensor([[[1.0, 0.0]]], **f64)                   # G=1, N=1, D=2
    k = torch.tensor([[[0.6, 0.8]]], **f64)
    Q = torch.tensor([[[0.0, -1.0], [1.0, 0.0]]], **f64)      # columns (0,1) and (-1,0)
    # logits = [0.6, 0, -1] / tau; loss = -log softmax[0]
    a, b, c = 0.6 / TAU, 0.0, -1.0 / TAU
    expected = -a + math.log(math.exp(a) + math.exp(b) + math.exp(c))
    assert info_nce(q, k, Q, TAU).item() == pytest.approx(expected, rel=1e-9)


def test_info_nce_matches_cross_entropy_per_modality():
    q, k, Q = rand_setup()
    out = info_nce(q, k, Q, TAU)
    assert out.shape == (3,)
    for g in range(3):
        logits = torch.cat([(q[g] * k[g]).sum(1, keepdim=True), q[g] @ Q[g]], 1) / TAU
        ref = F.cross_entropy(logits, torch.zeros(5, dtype=torch.long))
        torch.testing.assert_close(out[g], ref)


# ---------------------------------------------------------------- §5.4a context term
def closed_form_pair(q, k, Q, x, y, topk=1, context=True, mine=None):
    """mean_n l_xy via the LSE closed form of method.md §5.4a, written independently.

    Positives are mined with modality `mine`'s similarities (default y, as the official code).
    """
    Lx, Ly = q[x] @ Q[x], q[y] @ Q[y]
    Lm = Ly if mine is None else q[mine] @ Q[mine]
    lpos = (q[x] * k[x]).sum(1)
    vals = []
    for n in range(q.shape[1]):
        idx = torch.topk(Lm[n], topk).indices
        first = torch.cat([lpos[n:n + 1], Lx[n]]) / TAU
        if context:
            C = Lx[n] * Ly[n] / TAU
            total = torch.log(torch.exp(lse(first)) + torch.exp(lse(C)))
            pos = torch.cat([first[:1], first[1 + idx], C[idx]])
        else:
            total = lse(first)
            pos = torch.cat([first[:1], first[1 + idx]])
        assert pos.numel() == (1 + 2 * topk if context else 1 + topk)
        vals.append(total - pos.mean())
    return torch.stack(vals).mean()


def test_context_pair_hand_computed_two_modalities():
    # G=2, N=1, D=2, K=2; every quantity small enough to write down.
    q = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=torch.float64)
    k = torch.tensor([[[0.8, 0.6]], [[0.6, 0.8]]], dtype=torch.float64)
    Q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]],      # Q_0 columns (1,0), (0,1)
                      [[0.0, 1.0], [1.0, 0.0]]], dtype=torch.float64)  # Q_1 columns (0,1), (1,0)
    # L_0 = [1, 0], L_1 = [1, 0]; l+_0 = 0.8, l+_1 = 0.8; both mine index 0.
    # Z_01 = [0.8, 1, 0, 1*1, 0*0] / tau, positives {0, 1, 3}
    z = [0.8 / TAU, 1 / TAU, 0.0, 1 / TAU, 0.0]
    l01 = math.log(sum(math.exp(v) for v in z)) - (z[0] + z[1] + z[3]) / 3
    P = context_pair_losses(q, k, Q, TAU, topk=1)
    assert P[0, 1].item() == pytest.approx(l01, rel=1e-9)
    assert P[1, 0].item() == pytest.approx(l01, rel=1e-9)  # symmetric setup
    assert P[0, 0].item() == 0 and P[1, 1].item() == 0
    torch.testing.assert_close(context_loss(q, k, Q, TAU), P.sum(1))  # G-1 = 1 partner


@pytest.mark.parametrize("topk", [1, 2])
@pytest.mark.parametrize("context", [True, False])
def test_context_pairs_match_closed_form(topk, context):
    q, k, Q = rand_setup(G=3, N=4, D=4, K=7, seed=5)
    P = context_pair_losses(q, k, Q, TAU, topk=topk, context=context)
    assert P.shape == (3, 3)
    for x in range(3):
        for y in range(3):
            if x == y:
                assert P[x, y] == 0
            else:
                torch.testing.assert_close(P[x, y], closed_form_pair(q, k, Q, x, y, topk, context))


def test_positives_are_mined_with_partner_similarities():
    q, k, Q = rand_setup(G=2, N=6, D=4, K=9, seed=11)
    P = context_pair_losses(q, k, Q, TAU)
    # l_01 uses mask_1 (method.md §5.4a: "loss_jm uses mask_m"); mining with modality 0's own
    # similarities is a different number here because the two argmaxes differ.
    assert torch.argmax(q[0] @ Q[0], 1).tolist() != torch.argmax(q[1] @ Q[1], 1).tolist()
    torch.testing.assert_close(P[0, 1], closed_form_pair(q, k, Q, 0, 1, mine=1))
    assert not torch.allclose(P[0, 1], closed_form_pair(q, k, Q, 0, 1, mine=0))


def test_context_loss_averages_partners_and_pair_weight():
    q, k, Q = rand_setup(G=4, N=3, D=4, K=6, seed=2)
    P = context_pair_losses(q, k, Q, TAU)
    torch.testing.assert_close(context_loss(q, k, Q, TAU), P.sum(1) / 3)
    W = torch.rand(4, 4, dtype=torch.float64)
    torch.testing.assert_close(context_loss(q, k, Q, TAU, pair_weight=W), (P * W).sum(1))
    with pytest.raises(ValueError):
        context_loss(q[:1], k[:1], Q[:1])


def test_context_block_carries_gradient_to_partner_query():
    q, k, Q = rand_setup(G=2, N=3, D=4, K=6, seed=4)
    for context, expect_grad in ((True, True), (False, False)):
        qq = q.clone().requires_grad_(True)
        P = context_pair_losses(qq, k, Q, TAU, context=context)
        (g,) = torch.autograd.grad(P[0, 1], qq)
        # l_01 depends on q_1 only through C_01 = L_0 * L_1 (not detached, §5.4a); indices have no grad.
        assert bool(g[1].abs().sum() > 0) == expect_grad
        assert g[0].abs().sum() > 0


# ---------------------------------------------------------------- §5.4b IKEM
def test_concat_helpers_scale_by_sqrt_g():
    q, k, Q = rand_setup(G=6, N=3, D=4, K=5)
    torch.testing.assert_close(concat_keys(k), torch.cat(list(k), dim=1) / math.sqrt(6))
    torch.testing.assert_close(concat_queues(Q), torch.cat(list(Q), dim=0) / math.sqrt(6))


def test_ikem_loss_matches_explicit_cross_entropy():
    G, N, D, K = 3, 4, 4, 6
    _, k, Q = rand_setup(G, N, D, K, seed=7)
    u = unit(G, N, G * D, seed=9, dtype=torch.float64)
    out = ikem_loss(u, k, Q, TAU)
    kappa = torch.cat([k[g] for g in range(G)], 1)
    kappa = kappa / kappa.norm(dim=1, keepdim=True)
    Qc = torch.cat([Q[g] for g in range(G)], 0)
    Qc = Qc / Qc.norm(dim=0, keepdim=True)
    for x in range(G):
        logits = torch.cat([(u[x] * kappa).sum(1, keepdim=True), u[x] @ Qc], 1) / TAU
        torch.testing.assert_close(out[x], F.cross_entropy(logits, torch.zeros(N, dtype=torch.long)))


def test_phase2_total_is_sum_of_terms():
    G, N, D, K = 3, 4, 4, 6
    q, k, Q = rand_setup(G, N, D, K, seed=3)
    u = unit(G, N, G * D, seed=4, dtype=torch.float64)
    total = phase2_loss(q, u, k, Q, TAU, 1)
    assert total.dim() == 0
    torch.testing.assert_close(total, (context_loss(q, k, Q, TAU, 1) + ikem_loss(u, k, Q, TAU)).sum())
    torch.testing.assert_close(phase2_loss(q, None, k, Q, TAU, 1), context_loss(q, k, Q, TAU, 1).sum())


# ---------------------------------------------------------------- §6 relational distillation
def closed_form_distill(tq, s, Qs, QT, topk=1):
    G, N, D = tq.shape
    t = torch.cat(list(tq), 1)
    t = t / t.norm(dim=1, keepdim=True)
    out = []
    for si in range(s.shape[0]):
        Ls = s[si] @ QT
        lpos = (s[si] * t).sum(1)
        per_x = []
        for x in range(G):
            Lx = tq[x] @ Qs[x]
            vals = []
            for n in range(N):
                idx = torch.topk(Lx[n], topk).indices
                first = torch.cat([lpos[n:n + 1], Ls[n]]) / TAU
                C = Lx[n] * Ls[n] / TAU
                total = torch.log(torch.exp(lse(first)) + torch.exp(lse(C)))
                vals.append(total - torch.cat([first[:1], first[1 + idx], C[idx]]).mean())
            per_x.append(torch.stack(vals).mean())
        out.append(torch.stack(per_x).mean())
    return torch.stack(out)


@pytest.mark.parametrize("G,S", [(6, 3), (3, 1)])
def test_relational_distill_matches_closed_form(G, S):
    N, D, K = 3, 4, 5
    tq = unit(G, N, D, seed=1, dtype=torch.float64)
    s = unit(S, N, G * D, seed=2, dtype=torch.float64)
    Qs = unit(G, D, K, dim=1, seed=3, dtype=torch.float64)
    QT = unit(G * D, K, dim=0, seed=4, dtype=torch.float64)
    out = relational_distill_loss(tq, s, Qs, QT, TAU, 1)
    assert out.shape == (S,)
    torch.testing.assert_close(out, closed_form_distill(tq, s, Qs, QT))


def test_distill_bug1_bone_queue_in_omega_slot():
    G, N, D, K = 6, 3, 4, 5
    tq = unit(G, N, D, seed=1, dtype=torch.float64)
    s = unit(3, N, G * D, seed=2, dtype=torch.float64)
    Qs = unit(G, D, K, dim=1, seed=3, dtype=torch.float64)
    QT = unit(G * D, K, dim=0, seed=4, dtype=torch.float64)
    bug = Qs.clone()
    bug[5] = Qs[2]  # method.md §6.1 BUG: L-_o = q_o . Q_bone
    fixed, buggy = relational_distill_loss(tq, s, Qs, QT), relational_distill_loss(tq, s, bug, QT)
    assert not torch.allclose(fixed, buggy)
    torch.testing.assert_close(buggy, closed_form_distill(tq, s, bug, QT))


# ---------------------------------------------------------------- gradients
def test_gradcheck_all_losses_fp64():
    G, N, D, K = 2, 3, 3, 4
    q, k, Q = rand_setup(G, N, D, K, seed=21)
    q.requires_grad_(True)
    u = unit(G, N, G * D, seed=22, dtype=torch.float64).requires_grad_(True)
    s = unit(1, N, G * D, seed=23, dtype=torch.float64).requires_grad_(True)
    QT = unit(G * D, K, dim=0, seed=24, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: info_nce(a, k, Q, TAU), (q,))
    assert torch.autograd.gradcheck(lambda a: context_loss(a, k, Q, TAU, 1), (q,))
    assert torch.autograd.gradcheck(lambda a: ikem_loss(a, k, Q, TAU), (u,))
    assert torch.autograd.gradcheck(lambda a: relational_distill_loss(q.detach(), a, Q, QT, TAU), (s,))
