"""Eager oracle for the six skeleton modalities, written straight from method.md §3.3 / §3.4.

Plain vectorised PyTorch: no custom ops, no Python loops over samples or joints. It is the
baseline of benchmarks/bench_modalities.py and the oracle of tests/test_modalities*.py.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

from ..modality_spec import DEFAULT_SCALE_BASE, MODALITIES6, check_modalities_args
from ..topology import Topology

__all__ = ["modalities", "modalities_from_scale", "nrm"]


def nrm(u: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """u / max(||u||_2, 1e-12) over `dim` (method.md §3.1; F.normalize's default eps)."""
    return F.normalize(u, dim=dim, eps=1e-12)


def _shift_diff(y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """scale * (y[t+1] - y[t]) along dim 2 (time), zero at the last frame."""
    d = torch.zeros_like(y)
    d[:, :, :-1] = y[:, :, 1:] - y[:, :, :-1]
    return scale * d


def modalities(
    x: torch.Tensor,
    frames: Optional[torch.Tensor] = None,
    names: Union[str, Sequence[str]] = MODALITIES6,
    topology: Union[str, Topology] = "ntu25",
    scale_base: float = DEFAULT_SCALE_BASE,
) -> torch.Tensor:
    """Six skeleton modalities of `x` (method.md §3.3).

    Args:
        x: (N, 3, T, V, M) joint coordinates, floating point.
        frames: (N,) true frame counts F; the time scale is f = scale_base / F (1 if None).
        names: modalities to return, in order, from MODALITIES6.
        topology: 'ntu25' (IKEM lists, joint-21 normal), 'ntu25_crossclr' (§3.4) or a Topology.
    Returns:
        (N, len(names), 3, T, V, M) in x.dtype; half-precision inputs are computed in float32.
    """
    ids, topo, scale = check_modalities_args(x, frames, names, topology, scale_base)
    return modalities_from_scale(x, scale, ids, topo)


def modalities_from_scale(x: torch.Tensor, scale: Optional[torch.Tensor], ids: Sequence[int],
                          topo: Topology) -> torch.Tensor:
    """`modalities` after validation: scale (N,) is f itself (None = 1), ids index MODALITIES6."""
    out_dtype = x.dtype
    xf = x if x.dtype == torch.float64 else x.float()
    N = xf.shape[0]
    f = torch.ones(N, dtype=xf.dtype, device=xf.device) if scale is None else scale.to(xf.dtype)
    f = f.view(N, 1, 1, 1, 1)
    parent = torch.tensor(topo.bone_parent, device=xf.device)
    partner = torch.tensor(topo.axis_partner, device=xf.device)

    wanted = {MODALITIES6[i] for i in ids}
    out = {}
    out["joint"] = xf
    if wanted & {"motion", "acceleration"}:
        out["motion"] = _shift_diff(xf, f)
        # Acceleration differences the scaled motion and scales again: f^2 (x[t+2] - 2x[t+1] + x[t]);
        # the last two frames are zero (Mo[T-1] = 0 is never used).
        acc = _shift_diff(out["motion"], f)
        if acc.shape[2] >= 2:
            acc[:, :, -2] = 0
        out["acceleration"] = acc
    if wanted & {"bone", "rotation_axis", "omega"}:
        bone = xf - xf.index_select(3, parent)
        if topo.normal is not None:
            j, a, b, c = topo.normal
            # x[20] cancels in the official (B[1]-B[8]) x (B[4]-B[8]), so this is the same normal.
            normal = nrm(torch.cross(xf[:, :, :, a] - xf[:, :, :, b], xf[:, :, :, c] - xf[:, :, :, b], dim=1))
            bone = bone.index_copy(3, torch.tensor([j], device=xf.device), normal.unsqueeze(3))
        out["bone"] = bone
        partner_bone = bone.index_select(3, partner)
        axis = torch.cross(bone, partner_bone, dim=1)  # channel axis explicit (method.md §11 #7)
        out["rotation_axis"] = axis
        if "omega" in wanted:
            bh, ph = nrm(bone), nrm(partner_bone)
            theta = torch.atan2(torch.linalg.vector_norm(torch.cross(bh, ph, dim=1), dim=1, keepdim=True),
                                (bh * ph).sum(1, keepdim=True))
            # Omega uses the axis at time t, not t+1 (method.md §3.3).
            out["omega"] = _shift_diff(theta, f) * nrm(axis)
    result = torch.stack([out[MODALITIES6[i]] for i in ids], dim=1)
    return result.to(out_dtype)
