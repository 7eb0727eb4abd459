"""Contrastive losses of IKEM (method.md §5.3, §5.4, §6.1, §6.2), materialised and plain.

Layer: reference (plain PyTorch). The oracle of the fused similarity / InfoNCE ops: every N x K
(or N x (1+2K)) block is built explicitly and the masked log-softmax form is used, exactly as the
official code does. All features come in already L2-normalised; modalities are stacked along a
leading G axis. Each function returns per-modality (or per-student) batch-mean losses so that the
caller sums them. Gradients flow into every tensor argument that requires grad; mined indices are
computed without gradient (method.md §5.4a).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .modalities import nrm

__all__ = ["info_nce", "context_pair_losses", "context_loss", "ikem_loss", "phase2_loss",
           "relational_distill_loss", "masked_nll", "topk_onehot", "concat_keys", "concat_queues"]

TAU = 0.07  # method.md §5.1


def masked_nll(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """-(1/|P|) sum_{i in P} log softmax(logits)_i over the last dim, P = the ones of mask (§5.4a).

    logits, mask: (..., L) (mask broadcastable). Returns (...).
    """
    logp = F.log_softmax(logits, dim=-1)
    mask = mask.to(logp.dtype)
    return -(logp * mask).sum(-1) / mask.sum(-1)


def topk_onehot(sim: torch.Tensor, topk: int) -> torch.Tensor:
    """One-hot (float) of the top-k entries of sim (..., K) along the last dim; no gradient (§5.4a)."""
    idx = sim.detach().topk(topk, dim=-1).indices
    return torch.zeros_like(sim, dtype=sim.dtype).detach().scatter_(-1, idx, 1.0)


def concat_keys(k: torch.Tensor) -> torch.Tensor:
    """(G, N, D) per-modality unit features -> nrm(cat_x k_x) (N, G*D), modality-major (§5.4b, §6.1)."""
    G, N, D = k.shape
    return nrm(k.transpose(0, 1).reshape(N, G * D), dim=1)


def concat_queues(queues: torch.Tensor) -> torch.Tensor:
    """(G, D, K) queues -> column-normalised row concatenation (G*D, K) (method.md §5.4b)."""
    G, D, K = queues.shape
    return nrm(queues.reshape(G * D, K), dim=0)


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """Phase-1 MoCo InfoNCE per modality (method.md §5.3).

    Args:
        q: (G, N, D) query features; k: (G, N, D) positive keys; queue: (G, D, K) negatives.
    Returns:
        (G,): mean_n CE([<q,k>, q.Q] / tau, target 0).
    """
    l_pos = (q * k).sum(-1, keepdim=True)                 # (G, N, 1)
    l_neg = torch.bmm(q, queue)                            # (G, N, K)
    logits = torch.cat([l_pos, l_neg], dim=-1) / tau       # (G, N, 1+K)
    return (torch.logsumexp(logits, dim=-1) - logits[..., 0]).mean(-1)


def context_pair_losses(q: torch.Tensor, k: torch.Tensor, queues: torch.Tensor, tau: float = TAU,
                        topk: int = 1, context: bool = True) -> torch.Tensor:
    """Mean cross-modal mined-positive losses mean_n l_xy for all ordered pairs (method.md §5.4a).

    For each x, y != x: Z_xy = [l+_x, L-_x, L-_x * L-_y] / tau (N x (1+2K)), with
    l+_x = <q_x, k_x>, L-_x = q_x Q_x, and positives mask_y = [1, onehot(topk(L-_y)), same] mined
    with y's similarities (raw cosines, no gradient through the indices). The context block is not
    detached. With context=False (method.md §11 #8, implemented properly rather than raising) the
    context block and its mask ones are dropped: Z_xy = [l+_x, L-_x] / tau, mask [1, onehot_y].

    Args:
        q, k: (G, N, D); queues: (G, D, K).
    Returns:
        (G, G) matrix P[x, y] = mean_n l_xy, diagonal 0.
    """
    G, N, _ = q.shape
    L = torch.bmm(q, queues)                               # (G, N, K)  L-_x
    l_pos = (q * k).sum(-1, keepdim=True)                  # (G, N, 1)  l+_x
    onehot = topk_onehot(L, topk)                          # (G, N, K)  mined with modality y's own sims
    ones = torch.ones_like(l_pos)
    base = torch.cat([l_pos, L], dim=-1)                   # (G, N, 1+K)
    bx = base.unsqueeze(1).expand(G, G, N, base.shape[-1])  # [x, y] -> x's blocks
    if context:
        C = L.unsqueeze(1) * L.unsqueeze(0)                # (G, G, N, K) C_xy = L-_x * L-_y
        Z = torch.cat([bx, C], dim=-1) / tau               # (G, G, N, 1+2K)
        mask_y = torch.cat([ones, onehot, onehot], dim=-1)  # (G, N, 1+2K), 1+2*topk ones
    else:
        Z = bx / tau
        mask_y = torch.cat([ones, onehot], dim=-1)
    ell = masked_nll(Z, mask_y.unsqueeze(0))               # (G, G, N)
    off_diag = 1.0 - torch.eye(G, dtype=ell.dtype, device=ell.device)
    return ell.mean(-1) * off_diag


def context_loss(q: torch.Tensor, k: torch.Tensor, queues: torch.Tensor, tau: float = TAU, topk: int = 1,
                 pair_weight: Optional[torch.Tensor] = None, context: bool = True) -> torch.Tensor:
    """Per-modality cross-modal context term (method.md §5.4a): (1/(G-1)) sum_{y != x} mean_n l_xy.

    Args:
        q, k: (G, N, D) unit queries and keys; queues: (G, D, K) unit columns.
        pair_weight: optional (G, G) weights w[x, y] replacing 1/(G-1) (diagonal ignored).
    Returns:
        (G,) losses, one per query modality x.
    """
    G = q.shape[0]
    if G < 2:
        raise ValueError("context_loss needs at least 2 modalities")
    P = context_pair_losses(q, k, queues, tau, topk, context)
    if pair_weight is None:
        return P.sum(1) / (G - 1)
    return (P * pair_weight.to(P.dtype)).sum(1)


def ikem_loss(u: torch.Tensor, k: torch.Tensor, queues: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """IKEM implicit-exchange InfoNCE per modality (method.md §5.4b).

    kappa = nrm(cat_x k_x) (N, G*D); Q = column-normalised cat_rows(Q_x) (G*D, K);
    G_x = [<u_x, kappa>, u_x Q] / tau; IKEM_x = mean_n CE(G_x, 0).

    Args:
        u: (G, N, G*D) unit outputs of the mlp2 heads (768-d for 6 modalities, 384-d for 3).
        k: (G, N, D) unit keys; queues: (G, D, K).
    Returns:
        (G,).
    """
    kappa = concat_keys(k)                                 # (N, G*D)
    Qc = concat_queues(queues)                             # (G*D, K)
    l_pos = torch.einsum("gnc,nc->gn", u, kappa).unsqueeze(-1)
    l_neg = torch.einsum("gnc,ck->gnk", u, Qc)
    logits = torch.cat([l_pos, l_neg], dim=-1) / tau
    return (torch.logsumexp(logits, dim=-1) - logits[..., 0]).mean(-1)


def phase2_loss(q: torch.Tensor, u: Optional[torch.Tensor], k: torch.Tensor, queues: torch.Tensor,
                tau: float = TAU, topk: int = 1, context: bool = True) -> torch.Tensor:
    """Total phase-2 loss (HEAD, method.md §5.4): sum_x [context_x + IKEM_x], a scalar.

    u=None drops the IKEM term (the src.zip 'onlyloss1' variant, method.md §11 #3).
    """
    total = context_loss(q, k, queues, tau, topk, context=context)
    if u is not None:
        total = total + ikem_loss(u, k, queues, tau)
    return total.sum()


def relational_distill_loss(teacher_q: torch.Tensor, student_s: torch.Tensor, teacher_queues: torch.Tensor,
                            teacher_queue: torch.Tensor, tau: float = TAU, topk: int = 1) -> torch.Tensor:
    """Relational cross-modal distillation loss per student (method.md §6.1; §6.2 with S=1).

    t = nrm(cat_x q_x); for teacher modality x and student s:
    Z_xs = [<s, t>, s Q_T, L-_x * (s Q_T)] / tau with L-_x = q_x Q_x, positives
    mask_x = [1, onehot(topk(L-_x)), same]; loss_s = mean_n (1/G) sum_x l_xs.

    Args:
        teacher_q: (G, N, D) unit teacher query features (no grad in the official code).
        student_s: (S, N, G*D) unit student features.
        teacher_queues: (G, D, K) per-modality queues; pass Q_bone in omega's slot to reproduce
            method.md §11 BUG #1.
        teacher_queue: (G*D, K) queue of teacher features t.
    Returns:
        (S,) one loss per student.
    """
    G, N, _ = teacher_q.shape
    S = student_s.shape[0]
    L = torch.bmm(teacher_q, teacher_queues)               # (G, N, K)  L-_x
    t = concat_keys(teacher_q)                             # (N, G*D)
    l_pos = torch.einsum("snc,nc->sn", student_s, t).unsqueeze(-1)    # (S, N, 1)
    Ls = torch.einsum("snc,ck->snk", student_s, teacher_queue)         # (S, N, K)
    onehot = topk_onehot(L, topk)                          # (G, N, K)  teacher-x nearest neighbours
    base = torch.cat([l_pos, Ls], dim=-1).unsqueeze(0).expand(G, S, N, 1 + Ls.shape[-1])
    C = L.unsqueeze(1) * Ls.unsqueeze(0)                   # (G, S, N, K)
    Z = torch.cat([base, C], dim=-1) / tau                 # (G, S, N, 1+2K)
    mask_x = torch.cat([torch.ones_like(onehot[..., :1]), onehot, onehot], dim=-1).unsqueeze(1)
    ell = masked_nll(Z, mask_x)                            # (G, S, N)
    return ell.mean(-1).mean(0)
