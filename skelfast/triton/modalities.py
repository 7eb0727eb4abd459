"""Triton kernel of the six modalities (method.md §3.3): one program per BLOCK output positions
(n, t, v, m), all requested modalities in one pass, gathers of parent/partner joints by loaded
index. Same expression order as csrc/include/skelfast/modalities_math.h.

Import this module only when triton is installed; it is attached to the CUDA dispatch key by
skelfast.ops (engineering.md §4). Under TRITON_INTERPRET=1 it also runs on CPU tensors (tests).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from ._device_tables import device_table
from ._math import atan2, cross3, nrm3

__all__ = ["modalities_forward"]


@triton.jit
def _joint(x_ptr, fb, v, M, CS, mask, ACC: tl.constexpr):
    off = fb + v * M
    a = tl.load(x_ptr + off, mask=mask, other=0.0).to(ACC)
    b = tl.load(x_ptr + off + CS, mask=mask, other=0.0).to(ACC)
    c = tl.load(x_ptr + off + 2 * CS, mask=mask, other=0.0).to(ACC)
    return a, b, c


@triton.jit
def _bone(x_ptr, parent_ptr, fb, v, M, CS, mask, ACC: tl.constexpr,
          NJ: tl.constexpr, NA: tl.constexpr, NB: tl.constexpr, NC: tl.constexpr):
    p = tl.load(parent_ptr + v, mask=mask, other=0)
    jx, jy, jz = _joint(x_ptr, fb, v, M, CS, mask, ACC)
    px, py, pz = _joint(x_ptr, fb, p, M, CS, mask, ACC)
    bx = jx - px
    by = jy - py
    bz = jz - pz
    if NJ >= 0:  # torso normal nrm((x[a]-x[b]) x (x[c]-x[b])) replaces bone NJ
        ax, ay, az = _joint(x_ptr, fb, NA, M, CS, mask, ACC)
        qx, qy, qz = _joint(x_ptr, fb, NB, M, CS, mask, ACC)
        cx, cy, cz = _joint(x_ptr, fb, NC, M, CS, mask, ACC)
        nx, ny, nz = cross3(ax - qx, ay - qy, az - qz, cx - qx, cy - qy, cz - qz)
        nx, ny, nz = nrm3(nx, ny, nz)
        is_n = v == NJ
        bx = tl.where(is_n, nx, bx)
        by = tl.where(is_n, ny, by)
        bz = tl.where(is_n, nz, bz)
    return bx, by, bz


@triton.jit
def _angle(bx, by, bz, ax, ay, az):
    bx, by, bz = nrm3(bx, by, bz)
    ax, ay, az = nrm3(ax, ay, az)
    cx, cy, cz = cross3(bx, by, bz, ax, ay, az)
    return atan2(tl.sqrt(cx * cx + cy * cy + cz * cz), bx * ax + by * ay + bz * az)


@triton.jit
def _store3(o_ptr, off, CS, vx, vy, vz, mask):
    tl.store(o_ptr + off, vx.to(o_ptr.dtype.element_ty), mask=mask)
    tl.store(o_ptr + off + CS, vy.to(o_ptr.dtype.element_ty), mask=mask)
    tl.store(o_ptr + off + 2 * CS, vz.to(o_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _modalities_fwd_kernel(
    x_ptr, scale_ptr, parent_ptr, partner_ptr, out_ptr, total, T, V, M,
    HAS_SCALE: tl.constexpr, G: tl.constexpr, ACC: tl.constexpr,
    S_J: tl.constexpr, S_MO: tl.constexpr, S_B: tl.constexpr, S_AC: tl.constexpr, S_R: tl.constexpr,
    S_OM: tl.constexpr, NJ: tl.constexpr, NA: tl.constexpr, NB: tl.constexpr, NC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < total
    m = idx % M
    v = (idx // M) % V
    t = (idx // (M * V)) % T
    n = idx // (M * V * T)
    VM = V * M
    CS = T * VM
    fb = n * 3 * CS + t * VM + m  # frame base of (n, t, m)
    if HAS_SCALE:
        f = tl.load(scale_ptr + n, mask=mask, other=1.0).to(ACC)
    else:
        f = tl.full([BLOCK], 1.0, ACC)
    obase = n * (G * 3 * CS) + t * VM + v * M + m
    x0, y0, z0 = _joint(x_ptr, fb, v, M, CS, mask, ACC)
    if S_J >= 0:
        _store3(out_ptr, obase + S_J * 3 * CS, CS, x0, y0, z0, mask)
    if S_MO >= 0 or S_AC >= 0:
        has1 = mask & (t + 1 < T)
        x1, y1, z1 = _joint(x_ptr, fb + VM, v, M, CS, has1, ACC)
        mx = tl.where(has1, f * (x1 - x0), 0.0)
        my = tl.where(has1, f * (y1 - y0), 0.0)
        mz = tl.where(has1, f * (z1 - z0), 0.0)
        if S_MO >= 0:
            _store3(out_ptr, obase + S_MO * 3 * CS, CS, mx, my, mz, mask)
        if S_AC >= 0:  # f (f (x[t+2] - x[t+1]) - f (x[t+1] - x[t])) (method.md §3.3)
            has2 = mask & (t + 2 < T)
            x2, y2, z2 = _joint(x_ptr, fb + 2 * VM, v, M, CS, has2, ACC)
            ax = tl.where(has2, f * (f * (x2 - x1) - mx), 0.0)
            ay = tl.where(has2, f * (f * (y2 - y1) - my), 0.0)
            az = tl.where(has2, f * (f * (z2 - z1) - mz), 0.0)
            _store3(out_ptr, obase + S_AC * 3 * CS, CS, ax, ay, az, mask)
    if S_B >= 0 or S_R >= 0 or S_OM >= 0:
        a = tl.load(partner_ptr + v, mask=mask, other=0)
        bx, by, bz = _bone(x_ptr, parent_ptr, fb, v, M, CS, mask, ACC, NJ, NA, NB, NC)
        px, py, pz = _bone(x_ptr, parent_ptr, fb, a, M, CS, mask, ACC, NJ, NA, NB, NC)
        rx, ry, rz = cross3(bx, by, bz, px, py, pz)
        if S_B >= 0:
            _store3(out_ptr, obase + S_B * 3 * CS, CS, bx, by, bz, mask)
        if S_R >= 0:
            _store3(out_ptr, obase + S_R * 3 * CS, CS, rx, ry, rz, mask)
        if S_OM >= 0:
            has1 = mask & (t + 1 < T)
            cx, cy, cz = _bone(x_ptr, parent_ptr, fb + VM, v, M, CS, has1, ACC, NJ, NA, NB, NC)
            qx, qy, qz = _bone(x_ptr, parent_ptr, fb + VM, a, M, CS, has1, ACC, NJ, NA, NB, NC)
            dtheta = f * (_angle(cx, cy, cz, qx, qy, qz) - _angle(bx, by, bz, px, py, pz))
            dtheta = tl.where(has1, dtheta, 0.0)
            ux, uy, uz = nrm3(rx, ry, rz)  # the axis at time t (method.md §3.3)
            _store3(out_ptr, obase + S_OM * 3 * CS, CS, dtheta * ux, dtheta * uy, dtheta * uz, mask)


def modalities_forward(x: torch.Tensor, scale: Optional[torch.Tensor], select: Sequence[int],
                       bone_parent: Sequence[int], axis_partner: Sequence[int], normal: Sequence[int],
                       block: int = 256) -> torch.Tensor:
    """Same contract as torch.ops.skelfast.modalities: x (N,3,T,V,M) -> (N,G,3,T,V,M)."""
    x = x.contiguous()
    N, _, T, V, M = x.shape
    G = len(select)
    out = x.new_empty((N, G, 3, T, V, M))
    total = N * T * V * M
    if total == 0:
        return out
    slots = {mod: -1 for mod in range(6)}
    for g, mod in enumerate(select):
        slots[int(mod)] = g
    nj, na, nb, nc = (list(normal) if len(normal) == 4 else [-1, 0, 0, 0])
    acc = tl.float64 if x.dtype == torch.float64 else tl.float32
    grid = (triton.cdiv(total, block),)
    _modalities_fwd_kernel[grid](
        x, scale if scale is not None else x, device_table(bone_parent, x.device),
        device_table(axis_partner, x.device), out, total, T, V, M,
        HAS_SCALE=scale is not None, G=G, ACC=acc,
        S_J=slots[0], S_MO=slots[1], S_B=slots[2], S_AC=slots[3], S_R=slots[4], S_OM=slots[5],
        NJ=nj, NA=na, NB=nb, NC=nc, BLOCK=block,
    )
    return out
