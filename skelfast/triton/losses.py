"""Triton path of skelfast::contrastive_lse and its backward: the "semi-fused" design of
performance.md §6. Per queue chunk, the similarities of every source come from one GEMM each
(cuBLAS through torch.matmul, into a reused (A+B, N, chunk) buffer); Triton row kernels then do
all exponentials, sums, maxima and the backward dS in one pass over the chunk, so the only N x K
scale memory is one chunk (never the N x K logits, masks or log-softmaxes of the reference).

Phase-1 InfoNCE (and any D <= 128 problem without pairs or mining) uses `_nce_fused_kernel`
instead: fully fused, tl.dot on queue tiles, gradient formed in the forward, split-K partials
combined in a fixed order, nothing N x K in memory.

Semi-fused kernels (one program per (source or pair, row)):
- `_lse_rows_fwd_kernel`: sum_j exp(x_j * y_j / tau - shift) and max_j x_j * y_j over the chunk,
  with y = 1 for base rows (lse1) and y = the partner similarity for context pairs (lse2); optional
  store of the exp weights (gradient-in-forward mode).
- `_lse_rows_bwd_kernel`: dS_a[j] = g1 e1_j / tau + sum over pairs containing a of g2 e2_j s_partner,j / tau
  (pairs given as a CSR list per source), times the column scale.
Numerics follow csrc/cpu/losses_cpu.cpp: static shift 1/tau with a checked window and an exact
re-run outside it, fp32 accumulation (fp64 for fp64 inputs), bf16/fp16 queues upcast per chunk.
Top-k mining uses torch.topk per chunk merged with the running top-k (O(N * topk) state).

Import only when triton is installed; under TRITON_INTERPRET=1 the kernels run on CPU tensors.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from ._device_tables import device_table

__all__ = ["contrastive_lse_forward", "contrastive_lse_backward", "DEFAULT_CHUNK"]

DEFAULT_CHUNK = 8192   # columns per chunk: (A+B) x N x 8192 fp32 = 25 MiB for phase 2 at N=128
SHIFT_WINDOW = 40.0    # as losses::kShiftWindow (csrc/include/skelfast/losses_math.h)


@triton.jit
def _lse_rows_fwd_kernel(S_ptr, src_a_ptr, src_b_ptr, shift_ptr, sum_ptr, max_ptr, E_ptr, scale_ptr,
                         N, CS, it,
                         PAIR: tl.constexpr, STORE_E: tl.constexpr, HAS_SCALE: tl.constexpr,
                         BLOCK: tl.constexpr, ACC: tl.constexpr):
    r = tl.program_id(0)
    i = r // N
    n = r % N
    ma = tl.load(src_a_ptr + i)
    base_a = (ma * N + n) * CS
    if PAIR:
        mb = tl.load(src_b_ptr + i)
        base_b = (mb * N + n) * CS
    shift = tl.load(shift_ptr + r).to(ACC)
    acc = tl.zeros([BLOCK], dtype=ACC)
    mx = tl.full([BLOCK], float("-inf"), dtype=ACC)
    for c0 in range(0, CS, BLOCK):
        cols = c0 + tl.arange(0, BLOCK)
        mask = cols < CS
        x = tl.load(S_ptr + base_a + cols, mask=mask, other=0.0).to(ACC)
        if PAIR:
            x = x * tl.load(S_ptr + base_b + cols, mask=mask, other=0.0).to(ACC)
        e = tl.where(mask, tl.exp(x * it - shift), 0.0)
        acc += e
        mx = tl.maximum(mx, tl.where(mask, x, float("-inf")))
        if STORE_E:
            w = e
            if HAS_SCALE:
                w = w * tl.load(scale_ptr + cols, mask=mask, other=0.0).to(ACC)
            tl.store(E_ptr + base_a + cols, w, mask=mask)
    tl.store(sum_ptr + r, tl.sum(acc, axis=0))
    tl.store(max_ptr + r, tl.max(mx, axis=0))


@triton.jit
def _lse_rows_bwd_kernel(S_ptr, dS_ptr, g1_ptr, lse1_ptr, csr_ptr, pidx_ptr, partner_ptr, g2_ptr, lse2_ptr,
                         scale_ptr, N, CS, it,
                         HAS_SCALE: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    r = tl.program_id(0)          # a * N + n
    a = r // N
    n = r % N
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < CS
    x = tl.load(S_ptr + r * CS + cols, mask=mask, other=0.0).to(ACC)
    g1 = tl.load(g1_ptr + r).to(ACC)
    l1 = tl.load(lse1_ptr + r).to(ACC)
    d = g1 * it * tl.exp(x * it - l1)
    start = tl.load(csr_ptr + a)
    end = tl.load(csr_ptr + a + 1)
    for t in range(start, end):
        p = tl.load(pidx_ptr + t)
        m = tl.load(partner_ptr + t)
        y = tl.load(S_ptr + (m * N + n) * CS + cols, mask=mask, other=0.0).to(ACC)
        g2 = tl.load(g2_ptr + p * N + n).to(ACC)
        l2 = tl.load(lse2_ptr + p * N + n).to(ACC)
        d += g2 * it * tl.exp(x * y * it - l2) * y
    if HAS_SCALE:
        d = d * tl.load(scale_ptr + cols, mask=mask, other=0.0).to(ACC)
    tl.store(dS_ptr + r * CS + cols, d, mask=mask)


@triton.jit
def _nce_fused_kernel(q_ptr, Q_ptr, scale_ptr, shift_ptr, sum_ptr, max_ptr, U_ptr,
                      N, D, K, k_per_split, sQg, sQd, sQk, it,
                      HAS_SCALE: tl.constexpr, JAC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      BLOCK_D: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr):
    """Fully fused queue InfoNCE (performance.md §6 "Single InfoNCE"): grid (row blocks, sources,
    K splits). Streams BLOCK_D x BLOCK_K queue tiles, S = q . Q by tl.dot, e = exp(S/tau - shift),
    accumulates the row sums, maxima and (JAC) U = sum_j e_j scale_j Q_j with a second tl.dot; the
    splits are combined in a fixed order on the host (deterministic, no atomics)."""
    pid_n = tl.program_id(0)
    g = tl.program_id(1)
    split = tl.program_id(2)
    num_g = tl.num_programs(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    dcols = tl.arange(0, BLOCK_D)
    dmask = dcols < D
    q = tl.load(q_ptr + (g * N + rows[:, None]) * D + dcols[None, :], mask=rmask[:, None] & dmask[None, :],
                other=0.0).to(ACC)
    shift = tl.load(shift_ptr + g * N + rows, mask=rmask, other=0.0).to(ACC)
    acc = tl.zeros([BLOCK_N], dtype=ACC)
    mx = tl.full([BLOCK_N], float("-inf"), dtype=ACC)
    U = tl.zeros([BLOCK_N, BLOCK_D], dtype=ACC)
    k0 = split * k_per_split
    k1 = tl.minimum(k0 + k_per_split, K)
    for c in range(k0, k1, BLOCK_K):
        kc = c + tl.arange(0, BLOCK_K)
        kmask = kc < k1
        Qt = tl.load(Q_ptr + g * sQg + dcols[:, None] * sQd + kc[None, :] * sQk,
                     mask=dmask[:, None] & kmask[None, :], other=0.0).to(ACC)
        s = tl.dot(q, Qt, input_precision=PRECISION, out_dtype=ACC)
        if HAS_SCALE:
            sc = tl.load(scale_ptr + kc, mask=kmask, other=0.0).to(ACC)
            s = s * sc[None, :]
        e = tl.where(kmask[None, :], tl.exp(s * it - shift[:, None]), 0.0)
        acc += tl.sum(e, axis=1)
        mx = tl.maximum(mx, tl.max(tl.where(kmask[None, :], s, float("-inf")), axis=1))
        if JAC:
            if HAS_SCALE:
                e = e * sc[None, :]
            U += tl.dot(e, tl.trans(Qt), input_precision=PRECISION, out_dtype=ACC)
    out = (split * num_g + g) * N + rows
    tl.store(sum_ptr + out, acc, mask=rmask)
    tl.store(max_ptr + out, mx, mask=rmask)
    if JAC:
        tl.store(U_ptr + out[:, None] * D + dcols[None, :], U, mask=rmask[:, None] & dmask[None, :])


# One BLOCK_D tile per program; larger (IKEM's 768) uses the semi-fused path. 128: compiled for
# sm_90 (triton 3.6, BLOCK_N = BLOCK_K = 64, 8 warps, 3 stages) BLOCK_D = 128 takes 192 KiB of shared
# memory and 256 would take 384 KiB, past the H100's 227 KiB per block.
FUSED_MAX_D = 128


def _fused_ok(pb: "_Problem", topk: int, fused: Optional[bool]) -> bool:
    if fused is False:
        return False
    # fp64 tl.dot is not available on every GPU: fp64 (tests) takes the semi-fused path there.
    ok = (pb.P == 0 and pb.B == 0 and topk == 0 and pb.Da <= FUSED_MAX_D
          and (pb.ct == torch.float32 or pb.device.type != "cuda"))
    if fused and not ok:
        raise ValueError(f"fused InfoNCE kernel: needs no pairs, no group B, topk=0, Da <= {FUSED_MAX_D} and, "
                         f"on CUDA, float32")
    return ok


def _fused_pass(pb: "_Problem", qa, lpos, queue_a, col_scale, tau, shift1, jac, block_k=None, splits=None):
    A, N, Da, K = pb.A, pb.N, pb.Da, pb.K
    it = 1.0 / tau
    BLOCK_N = 64 if N > 32 else 16
    BLOCK_K = block_k or 64
    BLOCK_D = max(16, triton.next_power_of_2(Da))
    nblk = triton.cdiv(N, BLOCK_N)
    if splits is None:  # about 4 waves of 132 SMs at N=128, A=6; at least 2 tiles per split
        splits = max(1, min(triton.cdiv(K, 2 * BLOCK_K), triton.cdiv(528, nblk * A)))
    k_per_split = triton.cdiv(triton.cdiv(K, splits), BLOCK_K) * BLOCK_K
    splits = triton.cdiv(K, k_per_split)
    dev = qa.device
    psum = torch.empty((splits, A, N), dtype=pb.ct, device=dev)
    pmax = torch.empty_like(psum)
    pU = torch.empty((splits, A, N, Da), dtype=pb.ct, device=dev) if jac is not None else psum
    Q = queue_a
    sQg = 0 if pb.shared else Q.stride(0)
    # fp32: tf32x3 keeps fp32-level similarities on tensor cores (plain TF32 would shift logits by
    # ~1e-3 / tau); fp64 runs in IEEE.
    precision = "ieee" if pb.ct == torch.float64 else "tf32x3"
    _nce_fused_kernel[(nblk, A, splits)](
        qa, Q, col_scale if col_scale is not None else qa, shift1, psum, pmax, pU,
        N, Da, K, k_per_split, sQg, Q.stride(1), Q.stride(2), it,
        HAS_SCALE=col_scale is not None, JAC=jac is not None, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, BLOCK_D=BLOCK_D,
        ACC=_acc(pb.ct), PRECISION=precision, num_warps=8 if BLOCK_D >= 128 else 4)
    sum1 = torch.exp(lpos * it - shift1) + psum.sum(0)
    max1 = torch.maximum(lpos, pmax.amax(0))
    if jac is not None:
        jac.copy_(pU.sum(0))
    return sum1, max1


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _block(cs: int) -> int:
    return max(16, min(1024, triton.next_power_of_2(cs)))


class _Problem:
    def __init__(self, qa, queue_a, qb, queue_b, pair_a, pair_b, chunk):
        self.A, self.N, self.Da = qa.shape
        self.B = 0 if qb is None else qb.shape[0]
        self.M = self.A + self.B
        self.P = len(pair_a)
        self.K = queue_a.shape[2]
        self.shared = queue_a.shape[0] == 1 and self.A != 1
        self.ct = qa.dtype
        self.device = qa.device
        if chunk is None:  # keep the per-chunk buffers ((M + A) x N x chunk) near 64 MiB for large N
            per_col = (self.M + self.A) * self.N * qa.element_size()
            chunk = max(512, min(DEFAULT_CHUNK, (64 << 20) // max(1, per_col)))
        self.chunk = min(chunk, self.K)
        dev = qa.device
        self.src_base = torch.arange(self.A, dtype=torch.int32, device=dev)
        self.pa = device_table(pair_a, dev)
        self.pb = device_table(pair_b, dev)


def _sims(pb: _Problem, qa, queue_a, col_scale, qb, queue_b, c0: int, cs: int, S: torch.Tensor) -> None:
    """S[:A] = (qa . queue_a[:, :, c0:c0+cs]) * col_scale, S[A:] = qb . queue_b chunk (in place)."""
    A, N = pb.A, pb.N
    ca = queue_a[:, :, c0:c0 + cs].to(pb.ct)
    if pb.shared:
        torch.mm(qa.reshape(A * N, pb.Da), ca[0], out=S[:A].view(A * N, cs))
    else:
        torch.bmm(qa, ca, out=S[:A])
    if col_scale is not None:
        S[:A].mul_(col_scale[c0:c0 + cs])
    if pb.B:
        torch.bmm(qb, queue_b[:, :, c0:c0 + cs].to(pb.ct), out=S[A:])


def _pass(pb: _Problem, qa, lpos, queue_a, col_scale, qb, queue_b, tau, topk, shift1, shift2, jac):
    A, N, P, M = pb.A, pb.N, pb.P, pb.M
    it = 1.0 / tau
    sum1 = torch.exp(lpos * it - shift1)
    max1 = lpos.clone()
    sum2 = torch.zeros((P, N), dtype=pb.ct, device=qa.device)
    max2 = torch.full((P, N), float("-inf"), dtype=pb.ct, device=qa.device)
    topv = topi = None
    S = torch.empty((M, N, pb.chunk), dtype=pb.ct, device=qa.device)
    E = torch.empty((A, N, pb.chunk), dtype=pb.ct, device=qa.device) if jac is not None else None
    part_s = torch.empty((max(A, P), N), dtype=pb.ct, device=qa.device)
    part_m = torch.empty_like(part_s)
    ACC = _acc(pb.ct)
    for c0 in range(0, pb.K, pb.chunk):
        cs = min(pb.chunk, pb.K - c0)
        Sc = S[:, :, :cs] if cs == pb.chunk else torch.empty((M, N, cs), dtype=pb.ct, device=qa.device)
        _sims(pb, qa, queue_a, col_scale, qb, queue_b, c0, cs, Sc)
        if topk > 0:
            v, i = Sc.topk(min(topk, cs), dim=-1)
            i = i + c0
            if topv is not None:
                v = torch.cat([topv, v], -1)   # fewer than topk columns while chunks are narrower than topk
                v, j = v.topk(min(topk, v.shape[-1]), dim=-1)
                i = torch.cat([topi, i], -1).gather(-1, j)
            topv, topi = v, i
        Ec = None
        if E is not None:
            Ec = E[:, :, :cs] if cs == pb.chunk else torch.empty((A, N, cs), dtype=pb.ct, device=qa.device)
        scale_c = col_scale[c0:c0 + cs] if col_scale is not None else Sc
        _lse_rows_fwd_kernel[(A * N,)](Sc, pb.src_base, pb.src_base, shift1, part_s, part_m,
                                      Ec if Ec is not None else Sc, scale_c, N, cs, it,
                                      PAIR=False, STORE_E=Ec is not None, HAS_SCALE=col_scale is not None,
                                      BLOCK=_block(cs), ACC=ACC)
        sum1 += part_s[:A]
        torch.maximum(max1, part_m[:A], out=max1)
        if P:
            _lse_rows_fwd_kernel[(P * N,)](Sc, pb.pa, pb.pb, shift2, part_s, part_m, Sc, Sc, N, cs, it,
                                          PAIR=True, STORE_E=False, HAS_SCALE=False, BLOCK=_block(cs), ACC=ACC)
            sum2 += part_s[:P]
            torch.maximum(max2, part_m[:P], out=max2)
        if Ec is not None:
            ca = queue_a[:, :, c0:c0 + cs].to(pb.ct)
            jac += torch.matmul(Ec, ca[0].t()) if pb.shared else torch.bmm(Ec, ca.transpose(1, 2))
    return sum1, max1, sum2, max2, topi


def contrastive_lse_forward(qa, lpos, queue_a, col_scale, qb, queue_b, pair_a: Sequence[int], pair_b: Sequence[int],
                            tau: float, topk: int, jacobian: bool = False, chunk: Optional[int] = None,
                            fused: Optional[bool] = None, block_k: Optional[int] = None, splits: Optional[int] = None):
    """Same contract as torch.ops.skelfast.contrastive_lse (see skelfast/ops/losses.py).

    Plain InfoNCE problems (no pairs, no group B, topk=0, Da <= FUSED_MAX_D = 128: phase 1) run the fully fused
    tl.dot kernel; everything else the semi-fused chunk path. `fused` forces a path (tests);
    `chunk`, `block_k`, `splits` are tuning / test knobs.
    """
    pb = _Problem(qa, queue_a, qb, queue_b, pair_a, pair_b, chunk)
    qa, lpos = qa.contiguous(), lpos.contiguous()
    qb = qb.contiguous() if qb is not None else None
    if col_scale is not None:
        col_scale = col_scale.contiguous()
    it = 1.0 / tau
    dev = qa.device
    jac = torch.zeros((pb.A, pb.N, pb.Da), dtype=pb.ct, device=dev) if jacobian else None
    shift1 = torch.full((pb.A, pb.N), it, dtype=pb.ct, device=dev)
    shift2 = torch.full((pb.P, pb.N), it, dtype=pb.ct, device=dev)
    use_fused = _fused_ok(pb, topk, fused)
    if use_fused:
        sum1, max1 = _fused_pass(pb, qa, lpos, queue_a, col_scale, tau, shift1, jac, block_k, splits)
        sum2 = max2 = shift2
        topi = None
    else:
        sum1, max1, sum2, max2, topi = _pass(pb, qa, lpos, queue_a, col_scale, qb, queue_b, tau, topk, shift1, shift2,
                                             jac)
    ex1, ex2 = max1 * it, max2 * it
    bad = ((ex1 - shift1).abs() > SHIFT_WINDOW).any() | ((ex2 - shift2).abs() > SHIFT_WINDOW).any()
    bad = bad | ~torch.isfinite(ex1).all() | ~torch.isfinite(ex2).all()
    if bool(bad):  # one host sync per call; exact re-run with the row maxima as shifts
        shift1, shift2 = ex1, ex2
        if jac is not None:
            jac.zero_()
        if use_fused:
            sum1, _ = _fused_pass(pb, qa, lpos, queue_a, col_scale, tau, shift1, jac, block_k, splits)
        else:
            sum1, _, sum2, _, _ = _pass(pb, qa, lpos, queue_a, col_scale, qb, queue_b, tau, 0, shift1, shift2, jac)
    lse1 = shift1 + torch.log(sum1)
    lse2 = shift2 + torch.log(sum2) if pb.P else torch.zeros((0, pb.N), dtype=pb.ct, device=dev)
    idx = topi if topk > 0 else torch.zeros((pb.M, pb.N, 0), dtype=torch.long, device=dev)
    if jac is not None:
        jac *= (it / sum1).unsqueeze(-1)
    else:
        jac = qa.new_empty((0,))
    return lse1, lse2, idx.contiguous(), jac


def _csr(pb: _Problem, pair_a: Sequence[int], pair_b: Sequence[int], device) -> Tuple[torch.Tensor, ...]:
    """For each query-side source a < A: the pairs containing it and the partner source."""
    lists: List[List[Tuple[int, int]]] = [[] for _ in range(pb.A)]
    for p, (x, y) in enumerate(zip(pair_a, pair_b)):
        if x < pb.A:
            lists[x].append((p, y))
        if y < pb.A:
            lists[y].append((p, x))
    offs, pidx, partner = [0], [], []
    for entries in lists:
        for p, m in entries:
            pidx.append(p)
            partner.append(m)
        offs.append(len(pidx))
    mk = lambda v: device_table(v if v else [0], device)  # noqa: E731
    return mk(offs), mk(pidx), mk(partner)


def contrastive_lse_backward(grad_lse1, grad_lse2, qa, lpos, queue_a, col_scale, qb, queue_b, pair_a, pair_b, tau,
                             lse1, lse2, chunk: Optional[int] = None):
    """Same contract as torch.ops.skelfast.contrastive_lse_backward: returns (d qa, d lpos)."""
    pb = _Problem(qa, queue_a, qb, queue_b, pair_a, pair_b, chunk)
    qa, lpos = qa.contiguous(), lpos.contiguous()
    qb = qb.contiguous() if qb is not None else None
    g1, g2 = grad_lse1.contiguous(), grad_lse2.contiguous()
    l1, l2 = lse1.contiguous(), lse2.contiguous()
    it = 1.0 / tau
    A, N = pb.A, pb.N
    csr, pidx, partner = _csr(pb, pair_a, pair_b, qa.device)
    dq = torch.zeros((A, N, pb.Da), dtype=pb.ct, device=qa.device)
    S = torch.empty((pb.M, N, pb.chunk), dtype=pb.ct, device=qa.device)
    dS = torch.empty((A, N, pb.chunk), dtype=pb.ct, device=qa.device)
    for c0 in range(0, pb.K, pb.chunk):
        cs = min(pb.chunk, pb.K - c0)
        Sc = S[:, :, :cs] if cs == pb.chunk else torch.empty((pb.M, N, cs), dtype=pb.ct, device=qa.device)
        dSc = dS[:, :, :cs] if cs == pb.chunk else torch.empty((A, N, cs), dtype=pb.ct, device=qa.device)
        _sims(pb, qa, queue_a, col_scale, qb, queue_b, c0, cs, Sc)
        block = min(_block(cs), 256)
        scale_c = col_scale[c0:c0 + cs] if col_scale is not None else Sc
        _lse_rows_bwd_kernel[(A * N, triton.cdiv(cs, block))](
            Sc, dSc, g1, l1, csr, pidx, partner, g2 if pb.P else g1, l2 if pb.P else l1, scale_c, N, cs, it,
            HAS_SCALE=col_scale is not None, BLOCK=block, ACC=_acc(pb.ct))
        ca = queue_a[:, :, c0:c0 + cs].to(pb.ct)
        dq += torch.matmul(dSc, ca[0].t()) if pb.shared else torch.bmm(dSc, ca.transpose(1, 2))
    dlpos = g1 * it * torch.exp(lpos * it - l1)
    return dq, dlpos
