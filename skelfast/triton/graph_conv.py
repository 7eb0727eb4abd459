"""Triton kernels of skelfast::graph_conv: the graph aggregation and its backward (method.md §4.1).

Same "post" ordering as the C++ kernels (csrc/include/skelfast/graph_conv_math.h): per group g,
    z_g[k*Cin + ci, r, w] = sum_v x[b, g*Cin + ci, t, v] * Ae[g, k, v, w]      (r = b*T + t)
    out[b, g*Cout + c, t, w] = (Wp_g @ z_g)[c, r, w] + bias_eff[g, c, w]
with Ae = A * E and bias_eff[g, c, w] = sum_k bias[g, k, c] * sum_v Ae[g, k, v, w]. The
aggregation (and, in the backward, dx and the partial sums of d(Ae)) are Triton kernels with a
(BLOCK_R, VP) x (VP, VP) tl.dot per subset k (VP = V padded to a power of two >= 16); the 1x1
projections are batched GEMMs (torch.bmm -> cuBLAS). Accumulation is fp32 (fp64 for fp64 inputs,
which use a broadcast-multiply-sum instead of tl.dot); fp32 dots use IEEE precision (no TF32)
so that the Triton path matches the fp32 reference.

Import only with triton installed; under TRITON_INTERPRET=1 (set before this import) it also runs
on CPU tensors (tests). Attached to the CUDA key by skelfast.ops._backend.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

__all__ = ["graph_conv_forward", "graph_conv_backward", "aggregate", "aggregate_backward"]


@triton.jit
def _tile_dot(a, b, USE_DOT: tl.constexpr):
    if USE_DOT:
        return tl.dot(a, b, input_precision="ieee", out_dtype=tl.float32)
    else:
        return tl.sum(a[:, :, None] * b[None, :, :], axis=1)


@triton.jit
def _aggregate_kernel(x_ptr, ae_ptr, z_ptr, R, T, V, Cin, G,
                      K: tl.constexpr, VP: tl.constexpr, BLOCK_R: tl.constexpr, USE_DOT: tl.constexpr,
                      ACC: tl.constexpr):
    """z[g, k*Cin + ci, r, w] = sum_v x[b, g*Cin + ci, t, v] * ae[g, k, v, w]; one program per
    (g*Cin + ci, block of rows r = b*T + t)."""
    gc = tl.program_id(0)
    g = gc // Cin
    ci = gc % Cin
    r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    b = r // T
    t = r % T
    vv = tl.arange(0, VP)
    rmask = r < R
    vmask = vv < V
    x_off = ((b.to(tl.int64) * (G * Cin) + g * Cin + ci) * T + t) * V
    xt = tl.load(x_ptr + x_off[:, None] + vv[None, :], mask=rmask[:, None] & vmask[None, :], other=0.0).to(ACC)
    for k in tl.static_range(K):
        ae_off = ((g * K + k) * V + vv[:, None]) * V + vv[None, :]
        ae = tl.load(ae_ptr + ae_off, mask=vmask[:, None] & vmask[None, :], other=0.0).to(ACC)
        zt = _tile_dot(xt, ae, USE_DOT)
        z_off = ((g * K + k) * Cin + ci).to(tl.int64) * R * V + r.to(tl.int64) * V
        tl.store(z_ptr + z_off[:, None] + vv[None, :], zt.to(z_ptr.dtype.element_ty),
                 mask=rmask[:, None] & vmask[None, :])


@triton.jit
def _aggregate_bwd_kernel(x_ptr, dz_ptr, ae_ptr, dx_ptr, dae_ptr, R, T, V, Cin, G, NB,
                          K: tl.constexpr, VP: tl.constexpr, BLOCK_R: tl.constexpr, USE_DOT: tl.constexpr,
                          ACC: tl.constexpr):
    """dx[b, g*Cin+ci, t, v] = sum_k sum_w dz[g, k*Cin+ci, r, w] ae[g, k, v, w] and per-program
    partial sums dae[g, k, ci*NB + pid_r, v, w] = sum_r x[.., v] dz[.., w] (reduced on the host
    side in a fixed order: deterministic, no atomics)."""
    gc = tl.program_id(0)
    pr = tl.program_id(1)
    g = gc // Cin
    ci = gc % Cin
    r = pr * BLOCK_R + tl.arange(0, BLOCK_R)
    b = r // T
    t = r % T
    vv = tl.arange(0, VP)
    rmask = r < R
    vmask = vv < V
    m2 = rmask[:, None] & vmask[None, :]
    x_off = ((b.to(tl.int64) * (G * Cin) + g * Cin + ci) * T + t) * V
    xt = tl.load(x_ptr + x_off[:, None] + vv[None, :], mask=m2, other=0.0).to(ACC)
    dx = tl.zeros([BLOCK_R, VP], dtype=ACC)
    for k in tl.static_range(K):
        z_off = ((g * K + k) * Cin + ci).to(tl.int64) * R * V + r.to(tl.int64) * V
        dzt = tl.load(dz_ptr + z_off[:, None] + vv[None, :], mask=m2, other=0.0).to(ACC)
        # ae transposed: aet[w, v] = ae[g, k, v, w]
        aet = tl.load(ae_ptr + ((g * K + k) * V + vv[None, :]) * V + vv[:, None],
                      mask=vmask[:, None] & vmask[None, :], other=0.0).to(ACC)
        dx += _tile_dot(dzt, aet, USE_DOT)
        part = _tile_dot(tl.trans(xt), dzt, USE_DOT)  # (VP, VP): [v, w]
        p_off = (((g * K + k) * Cin + ci) * NB + pr).to(tl.int64) * VP * VP
        tl.store(dae_ptr + p_off + vv[:, None] * VP + vv[None, :], part)
    tl.store(dx_ptr + x_off[:, None] + vv[None, :], dx.to(dx_ptr.dtype.element_ty), mask=m2)


def _launch_cfg(x: torch.Tensor, V: int) -> Tuple[int, int, bool, object]:
    VP = max(16, triton.next_power_of_2(V))
    use_dot = x.dtype != torch.float64
    acc = tl.float64 if x.dtype == torch.float64 else tl.float32
    block_r = 32 if x.is_cuda else 16
    return VP, block_r, use_dot, acc


def _edge_weights(A: torch.Tensor, importance: Optional[torch.Tensor], G: int, acc: torch.dtype) -> torch.Tensor:
    K, V = A.shape[0], A.shape[1]
    a = A.to(acc)
    ae = a.expand(G, K, V, V) if importance is None else a * importance.to(acc).reshape(-1, K, V, V)
    return ae.expand(G, K, V, V).contiguous()


def aggregate(x: torch.Tensor, ae: torch.Tensor, G: int) -> torch.Tensor:
    """x (B, G*Cin, T, V), ae (G, K, V, V) -> z (G, K*Cin, B*T*V) in x's dtype."""
    x = x.contiguous()
    B, GC, T, V = x.shape
    Cin, K, R = GC // G, ae.shape[1], B * T
    z = x.new_empty((G, K * Cin, R * V))
    if z.numel() == 0:
        return z
    VP, block_r, use_dot, acc = _launch_cfg(x, V)
    grid = (G * Cin, triton.cdiv(R, block_r))
    _aggregate_kernel[grid](x, ae, z, R, T, V, Cin, G, K=K, VP=VP, BLOCK_R=block_r, USE_DOT=use_dot, ACC=acc)
    return z


def aggregate_backward(x: torch.Tensor, dz: torch.Tensor, ae: torch.Tensor, G: int):
    """-> dx (B, G*Cin, T, V) and d(ae) (G, K, V, V) in the accumulation dtype."""
    x = x.contiguous()
    dz = dz.contiguous()
    B, GC, T, V = x.shape
    Cin, K, R = GC // G, ae.shape[1], B * T
    VP, block_r, use_dot, acc = _launch_cfg(x, V)
    nb = triton.cdiv(R, block_r)
    dx = torch.empty_like(x)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    parts = torch.zeros((G, K, Cin * nb, VP, VP), dtype=acc_dtype, device=x.device)
    if R > 0 and Cin > 0:
        _aggregate_bwd_kernel[(G * Cin, nb)](x, dz, ae, dx, parts, R, T, V, Cin, G, nb, K=K, VP=VP,
                                             BLOCK_R=block_r, USE_DOT=use_dot, ACC=acc)
    else:
        dx.zero_()
    return dx, parts.sum(2)[:, :, :V, :V]


def _packed_weight(weight: torch.Tensor, G: int, K: int) -> torch.Tensor:
    """(G*K*Cout, Cin[,1,1]) -> Wp (G, Cout, K*Cin), Wp[g, c, k*Cin + ci] = W[(g*K + k)*Cout + c, ci]."""
    cin = weight.shape[1]
    cout = weight.shape[0] // (G * K)
    return weight.reshape(G, K, cout, cin).transpose(1, 2).reshape(G, cout, K * cin)


def graph_conv_forward(x, weight, bias, A, importance, groups):
    """Same contract as torch.ops.skelfast.graph_conv."""
    G, K, V = groups, A.shape[0], A.shape[1]
    B, _, T, _ = x.shape
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    ae = _edge_weights(A, importance, G, acc)
    z = aggregate(x, ae, G)                                     # (G, K*Cin, B*T*V)
    wp = _packed_weight(weight, G, K)
    o = torch.bmm(wp, z)                                        # (G, Cout, B*T*V)
    cout = wp.shape[1]
    out = o.view(G, cout, B, T, V).permute(2, 0, 1, 3, 4)
    if bias is not None:
        beff = torch.einsum("gkc,gkw->gcw", bias.to(acc).view(G, K, cout), ae.sum(2))
        out = out.to(acc) + beff[None, :, :, None, :]
    return out.reshape(B, G * cout, T, V).to(x.dtype).contiguous()


def graph_conv_backward(grad_out, x, weight, bias, A, importance, groups):
    """Same contract as torch.ops.skelfast.graph_conv_backward."""
    G, K, V = groups, A.shape[0], A.shape[1]
    B, _, T, _ = x.shape
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    ae = _edge_weights(A, importance, G, acc)
    wp = _packed_weight(weight, G, K)
    cout, cin = wp.shape[1], weight.shape[1]
    gg = grad_out.view(B, G, cout, T, V).permute(1, 2, 0, 3, 4).reshape(G, cout, B * T * V)
    z = aggregate(x, ae, G)
    dwp = torch.bmm(gg, z.transpose(1, 2))                      # (G, Cout, K*Cin)
    dz = torch.bmm(wp.transpose(1, 2), gg)                      # (G, K*Cin, B*T*V)
    dx, dae = aggregate_backward(x, dz, ae, G)
    r = grad_out.to(acc).view(B, G, cout, T, V).sum(dim=(0, 3))  # (G, Cout, W)
    s = ae.sum(2)                                               # (G, K, W)
    db = torch.einsum("gcw,gkw->gkc", r, s).reshape(-1).to(x.dtype)
    if bias is not None:
        dae = dae + torch.einsum("gkc,gcw->gkw", bias.to(acc).view(G, K, cout), r)[:, :, None, :]
    de = dae * A.to(acc)
    de = de.to(importance.dtype).reshape(importance.shape) if importance is not None else de
    dw = dwp.view(G, cout, K, cin).transpose(1, 2).reshape(weight.shape).to(x.dtype)
    return dx, dw, db, de
