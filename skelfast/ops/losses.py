"""skelfast.ops losses: fused, streaming contrastive losses of IKEM (method.md §5.3, §5.4, §6.1, §6.2).

Every loss here is built from one custom op, `torch.ops.skelfast.contrastive_lse`, which streams over
the MoCo queues in column chunks and returns per-row log-sum-exps (plus the top-k mined indices)
without ever storing an N x K matrix (method.md §9.4, performance.md §6):

    lse1[a, n] = LSE([lpos_a[n], S_a[n, :]] / tau),         S_a = q_a . Q_a      (base blocks)
    lse2[p, n] = LSE(S_x[n, :] * S_y[n, :] / tau)            for pairs p = (x, y) (context blocks)
    idx[m, n]  = top-k columns of S_m[n, :]                  (mined positives, no gradient)

The losses are then exact closed forms on (A, N)-sized tensors (method.md §5.4a):

    LSE(Z_xy) = logaddexp(lse1_x, lse2_{xy}),   l_xy = LSE(Z_xy) - (sum of the 1+2k positive logits) / (1+2k)

where the positive logits (l+_x, L-_x[idx_y], L-_x[idx_y] * L-_y[idx_y]) are gathered from N*k queue
columns in plain PyTorch, so autograd handles them (including the gradient of the context positive
into q_y, the block is not detached).

Gradients: to the queries (q, u, student s) and to the positive keys k through l+ (their exact
gradient, as in the reference). Queues are constants (MoCo queues never get gradients); in the
relational loss the teacher features are constants too (the teacher is frozen, method.md §6.1).
Mined indices carry no gradient.

Numerics: fp32 accumulation (fp64 for fp64 queries); queues may be fp32, fp64, bf16 or fp16
(upcast chunk by chunk). The C++ kernel uses the static shift 1/tau of performance.md §1.4 and
re-runs any row whose maximum logit falls outside a safe window with the exact row maximum, so
inputs that are not unit-normalised give correct (not silently wrong) losses. NaN in a query or a
queue gives a NaN loss, as in the reference; a +inf logit (an infinite input) gives NaN where the
reference gives +inf (both non-finite: the trainer stops on either), and the top-k indices of a
row holding NaN need not match torch.topk's. One precision limit remains for such inputs: the
pair losses' backward reuses the fp32 log-sum-exps as exponent shifts, so their fp32 query
gradients carry a relative error of about |lse| * 2^-24 (measured 1e-4 at |q| = 10, tau = 0.01,
2e-2 at |q| = 100; 4e-7 for unit inputs at tau = 0.07). Use fp64 inputs there.

Gradients are first order: a second backward (create_graph=True, then differentiating the
gradient) raises instead of returning a wrong Hessian product (skelfast/ops/_first_order.py).
"""
from __future__ import annotations

import functools
import math
import operator
from typing import List, Optional, Sequence, Tuple

import torch

from .. import _extension
from .._scalars import is_real
from ..reference import losses as ref
from ..reference.modalities import nrm
from ._devices import check_one_device
from . import _backend
from ._first_order import first_order

__all__ = ["info_nce", "context_pair_losses", "context_loss", "ikem_loss", "phase2_loss",
           "relational_distill_loss", "contrastive_lse"]

TAU = ref.TAU


# ------------------------------------------------------------------------------------------------
# The op and its pure-PyTorch composite (used where no compiled kernel exists, and as the spec of
# the op in tests).
# ------------------------------------------------------------------------------------------------
def contrastive_lse(qa: torch.Tensor, lpos: torch.Tensor, queue_a: torch.Tensor, col_scale: Optional[torch.Tensor],
                    qb: Optional[torch.Tensor], queue_b: Optional[torch.Tensor], pair_a: Sequence[int],
                    pair_b: Sequence[int], tau: float, topk: int,
                    jacobian: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Streaming log-sum-exps over queues (see the module docstring).

    Args:
        qa: (A, N, Da) float32/float64 queries (gradient); lpos: (A, N) positive similarities
            (gradient), qa's dtype; queue_a: (A or 1, Da, K) queue(s), float32/float64/bf16/fp16
            (a single queue is shared by all A sources); col_scale: None or (K,) per-column factor
            applied to S_a (IKEM's column normalisation), qa's dtype.
        qb: None or (B, N, Db) constant sources (teacher), queue_b: (B, Db, K).
        pair_a, pair_b: P pairs of source indices in [0, A+B) (sources A.. are qb's).
        tau: temperature > 0; topk: columns mined per source and row (0 = none).
        jacobian: also return jac[a, n] = d lse1[a, n] / d qa[a, n] (A, N, Da), computed in the
            forward pass with one extra GEMM per chunk; backward then needs no recompute pass
            (performance.md §6 (5)). Only with no pairs (P = 0).
    Returns:
        lse1 (A, N), lse2 (P, N) in qa's dtype; idx (A+B, N, topk) int64, descending similarity;
        jac (A, N, Da), or an empty (0,) tensor.
    """
    if jacobian and len(pair_a):
        raise ValueError("contrastive_lse: jacobian=True needs an empty pair list")
    impl = _backend.resolve(qa.device)
    args = (qa, lpos, queue_a, col_scale, qb, queue_b, list(pair_a), list(pair_b), float(tau), int(topk),
            bool(jacobian))
    if impl == "torch":
        return contrastive_lse_composite(*args)
    if impl == "triton":
        _backend.attach_triton()
    return torch.ops.skelfast.contrastive_lse(*args)


def _sources(qa, queue_a, col_scale, qb, queue_b):
    """All similarity blocks S_m (M, N, K) materialised: the composite / test path only."""
    ct = qa.dtype
    if queue_a.shape[0] == 1:
        sa = torch.einsum("and,dk->ank", qa, queue_a[0].to(ct))
    else:
        sa = torch.bmm(qa, queue_a.to(ct))
    if col_scale is not None:
        sa = sa * col_scale
    if qb is None:
        return sa
    return torch.cat([sa, torch.bmm(qb, queue_b.to(ct))], dim=0)


def contrastive_lse_composite(qa, lpos, queue_a, col_scale, qb, queue_b, pair_a, pair_b, tau, topk, jacobian=False):
    """Materialised PyTorch version of skelfast::contrastive_lse (same outputs, O(N K) memory)."""
    S = _sources(qa, queue_a, col_scale, qb, queue_b)
    A = qa.shape[0]
    lse1 = torch.logsumexp(torch.cat([lpos.unsqueeze(-1), S[:A]], dim=-1) / tau, dim=-1)
    pa = torch.as_tensor(list(pair_a), dtype=torch.long, device=qa.device)
    pb = torch.as_tensor(list(pair_b), dtype=torch.long, device=qa.device)
    lse2 = torch.logsumexp(S[pa] * S[pb] / tau, dim=-1) if len(pair_a) else qa.new_zeros((0, qa.shape[1]))
    idx = S.detach().topk(topk, dim=-1).indices if topk > 0 else torch.zeros(S.shape[:2] + (0,), dtype=torch.long,
                                                                              device=qa.device)
    jac = qa.new_empty((0,))
    if jacobian:
        p = torch.softmax(torch.cat([lpos.unsqueeze(-1), S[:qa.shape[0]]], dim=-1) / tau, dim=-1)[..., 1:]
        if col_scale is not None:
            p = p * col_scale
        Q = queue_a.to(qa.dtype)
        jac = (torch.einsum("ank,dk->and", p, Q[0]) if Q.shape[0] == 1 else torch.bmm(p, Q.transpose(1, 2))) / tau
    return lse1, lse2, idx, jac


def _contrastive_lse_backward_composite(grad_lse1, grad_lse2, qa, lpos, queue_a, col_scale, qb, queue_b, pair_a,
                                        pair_b, tau, lse1, lse2):
    """Backward by autograd through the composite (for devices with Triton but no compiled kernel)."""
    with torch.enable_grad():
        qg = qa.detach().requires_grad_(True)
        lg = lpos.detach().requires_grad_(True)
        l1, l2, _, _ = contrastive_lse_composite(qg, lg, queue_a, col_scale, qb, queue_b, pair_a, pair_b, tau, 0)
        dq, dl = torch.autograd.grad([l1, l2], [qg, lg], [grad_lse1, grad_lse2], allow_unused=True)
    return (torch.zeros_like(qa) if dq is None else dq), (torch.zeros_like(lpos) if dl is None else dl)


def _fake_checks(qa, lpos, queue_a, col_scale, qb, queue_b, pair_a, pair_b, tau, topk=0):
    torch._check(qa.dim() == 3, lambda: "qa must have shape (A, N, Da)")
    torch._check(lpos.dim() == 2 and lpos.shape[0] == qa.shape[0] and lpos.shape[1] == qa.shape[1],
                 lambda: "lpos must have shape (A, N)")
    torch._check(queue_a.dim() == 3 and queue_a.shape[1] == qa.shape[2], lambda: "queue_a must be (A or 1, Da, K)")
    torch._check(len(pair_a) == len(pair_b), lambda: "pair_a and pair_b must have the same length")
    torch._check(tau > 0, lambda: "tau must be > 0")
    K = queue_a.shape[2]
    torch._check(0 <= topk <= K, lambda: f"topk must be in [0, K={K}]")
    torch._check(col_scale is None or (col_scale.dim() == 1 and col_scale.shape[0] == K),
                 lambda: f"col_scale must be (K={K},)")
    torch._check((qb is None) == (queue_b is None), lambda: "qb and queue_b must be given together")
    M = qa.shape[0] + (qb.shape[0] if qb is not None else 0)
    torch._check(all(0 <= i < M for i in list(pair_a) + list(pair_b)),
                 lambda: f"pair indices must be in [0, {M}) (the A + B sources)")


def _register() -> None:
    @torch.library.register_fake("skelfast::contrastive_lse")
    def _fake(qa, lpos, queue_a, col_scale, qb, queue_b, pair_a, pair_b, tau, topk, jacobian=False):
        check_one_device("contrastive_lse", qa=qa, lpos=lpos, queue_a=queue_a, col_scale=col_scale, qb=qb,
                         queue_b=queue_b)
        _fake_checks(qa, lpos, queue_a, col_scale, qb, queue_b, pair_a, pair_b, tau, topk)
        torch._check(not jacobian or len(pair_a) == 0, lambda: "jacobian=True needs an empty pair list")
        A, N, Da = qa.shape
        M = A + (qb.shape[0] if qb is not None else 0)
        return (qa.new_empty((A, N)), qa.new_empty((len(pair_a), N)),
                qa.new_empty((M, N, topk), dtype=torch.long), qa.new_empty((A, N, Da) if jacobian else (0,)))

    @torch.library.register_fake("skelfast::contrastive_lse_backward")
    def _fake_bwd(grad_lse1, grad_lse2, qa, lpos, queue_a, col_scale, qb, queue_b, pair_a, pair_b, tau, lse1, lse2):
        check_one_device("contrastive_lse_backward", grad_lse1=grad_lse1, grad_lse2=grad_lse2, qa=qa, lpos=lpos,
                         queue_a=queue_a, col_scale=col_scale, qb=qb, queue_b=queue_b, lse1=lse1, lse2=lse2)
        _fake_checks(qa, lpos, queue_a, col_scale, qb, queue_b, pair_a, pair_b, tau)
        return qa.new_empty(qa.shape), lpos.new_empty(lpos.shape)

    def _setup_context(ctx, inputs, output):
        qa, lpos, queue_a, col_scale, qb, queue_b, pair_a, pair_b, tau, topk = inputs[:10]
        jacobian = inputs[10] if len(inputs) > 10 else False
        lse1, lse2, idx, jac = output
        ctx.mark_non_differentiable(idx, jac)
        ctx.args = (list(pair_a), list(pair_b), tau, bool(jacobian))
        if jacobian:  # gradient already formed in the forward: keep only (A, N, Da) and (A, N) tensors
            ctx.save_for_backward(lpos, lse1, jac)
        else:
            ctx.save_for_backward(qa, lpos, queue_a, col_scale, qb, queue_b, lse1, lse2)

    @first_order("skelfast::contrastive_lse")
    def _backward(ctx, grad_lse1, grad_lse2, _grad_idx, _grad_jac):
        pair_a, pair_b, tau, jacobian = ctx.args
        if jacobian:
            lpos, lse1, jac = ctx.saved_tensors
            if grad_lse1 is None:
                return (None,) * 11
            dq = grad_lse1.unsqueeze(-1) * jac
            dl = grad_lse1 * torch.exp(lpos / tau - lse1) / tau
        else:
            qa, lpos, queue_a, col_scale, qb, queue_b, lse1, lse2 = ctx.saved_tensors
            grad_lse1 = torch.zeros_like(lse1) if grad_lse1 is None else grad_lse1.contiguous()
            grad_lse2 = torch.zeros_like(lse2) if grad_lse2 is None else grad_lse2.contiguous()
            dq, dl = torch.ops.skelfast.contrastive_lse_backward(grad_lse1, grad_lse2, qa, lpos, queue_a, col_scale, qb,
                                                                queue_b, pair_a, pair_b, tau, lse1, lse2)
        return (dq if ctx.needs_input_grad[0] else None, dl if ctx.needs_input_grad[1] else None,
                None, None, None, None, None, None, None, None, None)

    torch.library.register_autograd("skelfast::contrastive_lse", _backward, setup_context=_setup_context)


def _triton_forward(qa, lpos, queue_a, col_scale, qb, queue_b, pair_a, pair_b, tau, topk, jacobian=False):
    from ..triton.losses import contrastive_lse_forward
    return contrastive_lse_forward(qa, lpos, queue_a, col_scale, qb, queue_b, pair_a, pair_b, tau, topk, jacobian)


def _triton_backward(grad_lse1, grad_lse2, qa, lpos, queue_a, col_scale, qb, queue_b, pair_a, pair_b, tau, lse1, lse2):
    from ..triton.losses import contrastive_lse_backward
    return contrastive_lse_backward(grad_lse1, grad_lse2, qa, lpos, queue_a, col_scale, qb, queue_b, pair_a, pair_b,
                                    tau, lse1, lse2)


_cuda_lib: Optional[torch.library.Library] = None


def _register_cuda() -> None:
    """There is no compiled CUDA kernel for this op: its CUDA key always runs the Triton launcher
    (semi-fused, performance.md §6), or the materialised composite when triton is missing."""
    global _cuda_lib
    if not _backend.register_triton_for_cuda({"contrastive_lse": _triton_forward,
                                              "contrastive_lse_backward": _triton_backward}):
        _cuda_lib = torch.library.Library("skelfast", "IMPL")
        _cuda_lib.impl("contrastive_lse", contrastive_lse_composite, "CUDA")
        _cuda_lib.impl("contrastive_lse_backward", _contrastive_lse_backward_composite, "CUDA")


if _extension.has_cpu_kernels() and hasattr(torch.ops.skelfast, "contrastive_lse"):
    _register()
    _register_cuda()
    _backend.register_triton_kernel("contrastive_lse", _triton_forward)
    _backend.register_triton_kernel("contrastive_lse_backward", _triton_backward)


# ------------------------------------------------------------------------------------------------
# Argument checks and helpers
# ------------------------------------------------------------------------------------------------
def _compute_dtype(*ts: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def _fp32_accumulation(fn):
    """Run a loss with autocast off: its inputs are cast to the compute dtype (fp32, fp64 for
    fp64) inside, and autocast would otherwise turn the positive-logit einsums back to bf16."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        first = next((t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)), None)
        if first is None or first.device.type not in ("cpu", "cuda"):
            # no tensor argument (fn's own checks name the problem), or a device autocast does not
            # know (meta tensors: shape inference), which has no autocast to switch off
            return fn(*args, **kwargs)
        with torch.autocast(first.device.type, enabled=False):
            return fn(*args, **kwargs)
    return wrapper


def _real_scalar(v):
    """A Python number from a real scalar: int/float, NumPy scalar, or one-element tensor (None if
    v is none of these; bool is not a number here)."""
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 and not v.is_complex() and v.dtype != torch.bool else None
    if is_real(v):
        return v
    return None


def _check_tau(tau: float) -> float:
    value = _real_scalar(tau)
    if value is None or not (math.isfinite(value) and value > 0):
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
    return float(value)


def _check_float(name: str, t: torch.Tensor, queue: bool = False) -> None:
    ok = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
    if t.dtype not in ok:
        raise TypeError(f"{name} must be float32, float64, bfloat16 or float16, got {t.dtype}")


def _check_qkq(q: torch.Tensor, k: torch.Tensor, queues: torch.Tensor, what: str) -> Tuple[int, int, int, int]:
    if q.dim() != 3:
        raise ValueError(f"{what}: q must have shape (G, N, D), got {tuple(q.shape)}")
    G, N, D = q.shape
    if k.shape != q.shape:
        raise ValueError(f"{what}: k must have q's shape {tuple(q.shape)}, got {tuple(k.shape)}")
    if queues.dim() != 3 or queues.shape[0] != G or queues.shape[1] != D:
        raise ValueError(f"{what}: queues must have shape (G, D, K) = ({G}, {D}, K), got {tuple(queues.shape)}")
    if queues.shape[2] < 1:
        raise ValueError(f"{what}: the queues need K >= 1 columns")
    for name, t in (("q", q), ("k", k), ("queues", queues)):
        _check_float(name, t)
    if not (q.device == k.device == queues.device):
        raise ValueError(f"{what}: q, k and queues must be on the same device")
    return G, N, D, queues.shape[2]


def _check_topk(topk: int, K: int) -> int:
    try:  # int, NumPy integer or one-element integer tensor; not float, not bool
        value = None if isinstance(topk, bool) else operator.index(topk)
    except TypeError:
        value = None
    if value is None or not 1 <= value <= K:
        raise ValueError(f"topk must be an integer in [1, K={K}], got {topk!r}")
    return value


def _use_reference(*ts: torch.Tensor) -> bool:
    return _backend.resolve(ts[0].device) == "torch" or not hasattr(torch.ops.skelfast, "contrastive_lse")


def _wants_grad(q: torch.Tensor) -> bool:
    """Form the query gradient in the forward pass (no recompute) when a backward will follow."""
    return torch.is_grad_enabled() and q.requires_grad


def _gather_cols(queue: torch.Tensor, idx: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """queue (D, K), idx (...,) -> columns (..., D) in dtype (constants: detached)."""
    return queue.detach().t()[idx.reshape(-1)].to(dtype).reshape(idx.shape + (queue.shape[0],))


# ------------------------------------------------------------------------------------------------
# Public losses (signatures of skelfast.reference.losses)
# ------------------------------------------------------------------------------------------------
@_fp32_accumulation
def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """Phase-1 MoCo InfoNCE for G modalities in one call (method.md §5.3).

    Args:
        q: (G, N, D) queries; k: (G, N, D) positive keys; queue: (G, D, K) negatives (constant).
    Returns:
        (G,): mean_n CE([<q,k>, q.Q] / tau, target 0), in the compute dtype (fp32, fp64 for fp64 q).
    """
    tau = _check_tau(tau)
    _check_qkq(q, k, queue, "info_nce")
    if _use_reference(q):
        return ref.info_nce(q, k, queue.detach(), tau)
    ct = _compute_dtype(q, k)
    qc, kc = q.to(ct), k.to(ct)
    lpos = (qc * kc).sum(-1)                                                  # (G, N)
    lse1 = contrastive_lse(qc, lpos, queue.detach(), None, None, None, [], [], tau, 0, _wants_grad(qc))[0]
    return (lse1 - lpos / tau).mean(-1)


def _context_pairs(G: int) -> Tuple[List[int], List[int], torch.Tensor]:
    """Unordered pairs x < y and the (G, G) map from ordered pairs to their index (diag: -1)."""
    pa, pb = [], []
    where = torch.full((G, G), -1, dtype=torch.long)
    for x in range(G):
        for y in range(x + 1, G):
            where[x, y] = where[y, x] = len(pa)
            pa.append(x)
            pb.append(y)
    return pa, pb, where


@_fp32_accumulation
def context_pair_losses(q: torch.Tensor, k: torch.Tensor, queues: torch.Tensor, tau: float = TAU, topk: int = 1,
                        context: bool = True) -> torch.Tensor:
    """Mean cross-modal mined-positive losses mean_n l_xy for all ordered pairs (method.md §5.4a).

    Same semantics as skelfast.reference.losses.context_pair_losses: Z_xy = [l+_x, L-_x, L-_x*L-_y]/tau,
    positives mined with y's similarities (1 + 2*topk of them; 1 + topk with context=False). Uses
    G base log-sum-exps and G(G-1)/2 shared context log-sum-exps per row. On exactly tied
    similarities the mined column is the earliest (the CPU kernel) where the reference's
    torch.topk may pick another, so the losses can then differ (issue 5 allows it); ties occur
    e.g. for an all-zero feature, which a fresh encoder gives for an all-zero modality (motion at T=1).

    Args:
        q, k: (G, N, D), G >= 2; queues: (G, D, K) (constant); topk in [1, K].
    Returns:
        (G, G) matrix P[x, y] = mean_n l_xy with zero diagonal.
    """
    tau = _check_tau(tau)
    G, N, D, K = _check_qkq(q, k, queues, "context_pair_losses")
    if G < 2:
        raise ValueError("context_pair_losses needs at least 2 modalities")
    topk = _check_topk(topk, K)
    if _use_reference(q):
        return ref.context_pair_losses(q, k, queues.detach(), tau, topk, context)
    ct = _compute_dtype(q, k)
    qc, kc = q.to(ct), k.to(ct)
    queues = queues.detach()
    lpos = (qc * kc).sum(-1)                                                  # (G, N)
    pa, pb, where = _context_pairs(G) if context else ([], [], None)
    lse1, lse2, idx, _ = contrastive_lse(qc, lpos, queues, None, None, None, pa, pb, tau, topk)
    # Positives: Lg[x, y, n, t] = q_x[n] . Q_x[:, idx_y[n, t]] (x's similarity at y's mined column).
    cols = torch.stack([_gather_cols(queues[x], idx, ct) for x in range(G)])  # (G_x, G_y, N, topk, D)
    Lg = torch.einsum("xnd,xyntd->xynt", qc, cols)
    pos = Lg.sum(-1)                                                          # (G, G, N)
    npos = 1 + topk
    if context:
        Ly = Lg.diagonal(0, 0, 1).permute(2, 0, 1)                            # (G_y, N, topk) = L-_y[idx_y]
        pos = pos + (Lg * Ly.unsqueeze(0)).sum(-1)
        npos += topk
        w = where.clone()
        w.fill_diagonal_(0)
        lse = torch.logaddexp(lse1.unsqueeze(1), lse2[w.to(lse2.device)])     # (G, G, N)
    else:
        lse = lse1.unsqueeze(1).expand(G, G, N)
    ell = lse - (lpos.unsqueeze(1) + pos) / (npos * tau)
    off_diag = 1.0 - torch.eye(G, dtype=ell.dtype, device=ell.device)
    return ell.mean(-1) * off_diag


def context_loss(q: torch.Tensor, k: torch.Tensor, queues: torch.Tensor, tau: float = TAU, topk: int = 1,
                 pair_weight: Optional[torch.Tensor] = None, context: bool = True) -> torch.Tensor:
    """Per-modality cross-modal context term (method.md §5.4a): (1/(G-1)) sum_{y != x} mean_n l_xy.

    Args:
        q, k: (G, N, D) unit queries and keys; queues: (G, D, K) (constant).
        pair_weight: optional (G, G) weights w[x, y] replacing 1/(G-1) (diagonal ignored).
    Returns:
        (G,) losses, one per query modality x.
    """
    G = q.shape[0] if q.dim() == 3 else 0
    if G < 2:
        raise ValueError("context_loss needs q of shape (G, N, D) with at least 2 modalities")
    if pair_weight is not None and not isinstance(pair_weight, torch.Tensor):
        raise TypeError(f"pair_weight must be a ({G}, {G}) tensor or None, got {type(pair_weight).__name__}")
    if pair_weight is not None and tuple(pair_weight.shape) != (G, G):
        raise ValueError(f"pair_weight must have shape ({G}, {G}), got {tuple(pair_weight.shape)}")
    P = context_pair_losses(q, k, queues, tau, topk, context)
    if pair_weight is None:
        return P.sum(1) / (G - 1)
    return (P * pair_weight.to(P.dtype)).sum(1)


@_fp32_accumulation
def ikem_loss(u: torch.Tensor, k: torch.Tensor, queues: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """IKEM implicit-exchange InfoNCE per modality (method.md §5.4b), without the concatenated queue.

    kappa = nrm(cat_x k_x); the column-normalised concatenated queue is read as the (G*D, K) view of
    the stacked queues times a per-column factor 1/||column|| (= 1/sqrt(G) for unit columns), so the
    768-d logits come from one GEMM per chunk against the original queue memory.

    Args:
        u: (G, N, G*D) mlp2 outputs; k: (G, N, D) keys; queues: (G, D, K) (constant, contiguous
            preferred: a non-contiguous stack is copied once).
    Returns:
        (G,).
    """
    tau = _check_tau(tau)
    if k.dim() != 3:
        raise ValueError(f"ikem_loss: k must have shape (G, N, D), got {tuple(k.shape)}")
    G, N, D = k.shape
    if u.dim() != 3 or tuple(u.shape) != (G, N, G * D):
        raise ValueError(f"ikem_loss: u must have shape (G, N, G*D) = ({G}, {N}, {G * D}), got {tuple(u.shape)}")
    if queues.dim() != 3 or tuple(queues.shape[:2]) != (G, D) or queues.shape[2] < 1:
        raise ValueError(f"ikem_loss: queues must have shape (G, D, K) = ({G}, {D}, K>=1), got {tuple(queues.shape)}")
    for name, t in (("u", u), ("k", k), ("queues", queues)):
        _check_float(name, t)
    if _use_reference(u):
        return ref.ikem_loss(u, k, queues.detach(), tau)
    ct = _compute_dtype(u, k)
    uc = u.to(ct)
    kappa = ref.concat_keys(k.to(ct))                                        # (N, G*D)
    Qc = queues.detach().contiguous().reshape(1, G * D, queues.shape[2])    # view, no copy
    # F.normalize(dim=0): 1 / max(||column||, 1e-12)
    col_scale = 1.0 / _column_norms(Qc[0], ct).clamp_min(1e-12)
    lpos = torch.einsum("gnc,nc->gn", uc, kappa)                             # (G, N)
    lse1 = contrastive_lse(uc, lpos, Qc, col_scale, None, None, [], [], tau, 0, _wants_grad(uc))[0]
    return (lse1 - lpos / tau).mean(-1)


def _column_norms(m: torch.Tensor, dtype: torch.dtype, rows: int = 32) -> torch.Tensor:
    """||m[:, j]|| for a (R, K) matrix, in `dtype`, summed over blocks of `rows` rows: torch's
    reduction over the leading dimension of a (768, 32768) queue took 50 ms on the 2-core CPU, this
    3.6 ms (and it needs no (R, K) temporary)."""
    acc = torch.zeros(m.shape[1], dtype=dtype, device=m.device)
    for r in range(0, m.shape[0], rows):
        block = m[r:r + rows].to(dtype)
        acc += (block * block).sum(0)
    return acc.sqrt()


def phase2_loss(q: torch.Tensor, u: Optional[torch.Tensor], k: torch.Tensor, queues: torch.Tensor,
                tau: float = TAU, topk: int = 1, context: bool = True) -> torch.Tensor:
    """Total phase-2 loss (HEAD, method.md §5.4): sum_x [context_x + IKEM_x], a scalar.

    u=None drops the IKEM term (the src.zip 'onlyloss1' variant, method.md §11 #3).
    """
    total = context_loss(q, k, queues, tau, topk, context=context)
    if u is not None:
        total = total + ikem_loss(u, k, queues, tau)
    return total.sum()


@_fp32_accumulation
def relational_distill_loss(teacher_q: torch.Tensor, student_s: torch.Tensor, teacher_queues: torch.Tensor,
                            teacher_queue: torch.Tensor, tau: float = TAU, topk: int = 1) -> torch.Tensor:
    """Relational cross-modal distillation loss per student (method.md §6.1; §6.2 with S=1).

    t = nrm(cat_x q_x); Z_xs = [<s,t>, s.Q_T, L-_x * (s.Q_T)] / tau, L-_x = q_x Q_x, positives mined
    by topk(L-_x); loss_s = mean_n (1/G) sum_x l_xs. The teacher is frozen: teacher_q, the queues
    and t are constants here (gradients reach student_s only).

    Args:
        teacher_q: (G, N, D); student_s: (S, N, G*D); teacher_queues: (G, D, K) (pass Q_bone in
            omega's slot to reproduce method.md §11 BUG #1); teacher_queue: (G*D, K).
    Returns:
        (S,) one loss per student.
    """
    tau = _check_tau(tau)
    if teacher_q.dim() != 3:
        raise ValueError(f"relational_distill_loss: teacher_q must be (G, N, D), got {tuple(teacher_q.shape)}")
    G, N, D = teacher_q.shape
    if G < 1:
        raise ValueError("relational_distill_loss: teacher_q must hold at least one teacher modality (G >= 1)")
    if student_s.dim() != 3 or student_s.shape[1] != N or student_s.shape[2] != G * D:
        raise ValueError(f"relational_distill_loss: student_s must be (S, {N}, {G * D}), got {tuple(student_s.shape)}")
    if teacher_queues.dim() != 3 or tuple(teacher_queues.shape[:2]) != (G, D):
        raise ValueError(f"relational_distill_loss: teacher_queues must be ({G}, {D}, K), "
                         f"got {tuple(teacher_queues.shape)}")
    K = teacher_queues.shape[2]
    if teacher_queue.dim() != 2 or tuple(teacher_queue.shape) != (G * D, K):
        raise ValueError(f"relational_distill_loss: teacher_queue must be ({G * D}, {K}), "
                         f"got {tuple(teacher_queue.shape)}")
    if K < 1:
        raise ValueError("relational_distill_loss: the queues need K >= 1 columns")
    topk = _check_topk(topk, K)
    for name, t in (("teacher_q", teacher_q), ("student_s", student_s), ("teacher_queues", teacher_queues),
                    ("teacher_queue", teacher_queue)):
        _check_float(name, t)
    tq, Qs, QT = teacher_q.detach(), teacher_queues.detach(), teacher_queue.detach()
    if _use_reference(student_s):
        return ref.relational_distill_loss(tq, student_s, Qs, QT, tau, topk)
    S = student_s.shape[0]
    ct = _compute_dtype(teacher_q, student_s)
    sc, tqc = student_s.to(ct), tq.to(ct)
    t = ref.concat_keys(tqc)                                                  # (N, G*D)
    lpos = torch.einsum("snc,nc->sn", sc, t)                                  # (S, N)
    pa = [s for s in range(S) for _ in range(G)]
    pb = [S + x for _ in range(S) for x in range(G)]
    lse1, lse2, idx, _ = contrastive_lse(sc, lpos, QT.unsqueeze(0), None, tqc, Qs, pa, pb, tau, topk)
    idx_t = idx[S:]                                                           # (G, N, topk) teacher-mined
    Lt = torch.stack([torch.einsum("nd,ntd->nt", tqc[x], _gather_cols(Qs[x], idx_t[x], ct)) for x in range(G)])
    Ls = torch.einsum("snc,xntc->xsnt", sc, _gather_cols(QT, idx_t, ct))      # (G, S, N, topk)
    pos = lpos.unsqueeze(0) + (Ls + Lt.unsqueeze(1) * Ls).sum(-1)            # (G, S, N)
    lse = torch.logaddexp(lse1.unsqueeze(0), lse2.reshape(S, G, N).transpose(0, 1))
    ell = lse - pos / ((1 + 2 * topk) * tau)
    return ell.mean(-1).mean(0)
