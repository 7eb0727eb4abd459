"""skelfast.ops.modalities: all requested skeleton modalities in one fused pass (method.md §3.3).

`torch.ops.skelfast.modalities` is defined in csrc/ops.cpp with CPU and CUDA kernels; this file
adds its fake kernel (torch.compile / FakeTensor), its autograd formula (the registered
`modalities_backward` op, so AOTAutograd only sees custom ops) and the Triton forward kernel,
which is attached to the CUDA dispatch key by skelfast.ops._backend.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence, Union

import torch

from .. import _extension, reference
from ..modality_spec import DEFAULT_SCALE_BASE, MODALITIES6, check_modalities_args
from ..topology import Topology
from ._devices import check_one_device
from . import _backend
from ._first_order import first_order

__all__ = ["modalities"]


def modalities(
    x: torch.Tensor,
    frames: Optional[torch.Tensor] = None,
    names: Union[str, Sequence[str]] = MODALITIES6,
    topology: Union[str, Topology] = "ntu25",
    scale_base: float = DEFAULT_SCALE_BASE,
) -> torch.Tensor:
    """Skeleton modalities of x in one pass (method.md §3.3; §3.4 with topology='ntu25_crossclr').

    Args:
        x: (N, 3, T, V, M) joints, float16/bfloat16/float32/float64, any strides.
        frames: (N,) true frame counts F (int or float, > 0); time scale f = scale_base / F.
            None means f = 1.
        names: modalities in output order, from MODALITIES6 ('joint', 'motion', 'bone',
            'acceleration', 'rotation_axis', 'omega'); each at most once.
        topology: 'ntu25' (IKEM lists P and A, joint-21 torso normal), 'ntu25_crossclr' (list P3,
            no normal), 'coco17', or any skelfast.topology.Topology.
    Returns:
        (N, len(names), 3, T, V, M) in x.dtype, computed in float32 (float64 for float64 x).
        Differentiable w.r.t. x.
    """
    if isinstance(names, Iterable) and not isinstance(names, str):
        names = tuple(names)   # an iterator would be used up by the checks before the reference sees it
    ids, topo, scale = check_modalities_args(x, frames, names, topology, scale_base)
    impl = _backend.resolve(x.device)
    if impl == "torch":
        return reference.modalities(x, frames, names, topo, scale_base)
    if impl == "triton":
        _backend.attach_triton()
    return torch.ops.skelfast.modalities(x, scale, list(ids), list(topo.bone_parent), list(topo.axis_partner),
                                         topo.normal_list)


def _fake_shape_checks(x, scale, select, bone_parent, axis_partner, normal):
    torch._check(x.dim() == 5 and x.shape[1] == 3, lambda: "x must have shape (N, 3, T, V, M)")
    torch._check(len(bone_parent) == x.shape[3] and len(axis_partner) == x.shape[3],
                 lambda: "topology tables must have V entries")
    torch._check(len(normal) in (0, 4), lambda: "normal must be [] or [joint, a, b, c]")
    torch._check(1 <= len(select) <= 6, lambda: "select must list 1..6 modalities")
    if scale is not None:
        torch._check(scale.dim() == 1 and scale.shape[0] == x.shape[0], lambda: "scale must have shape (N,)")


def _register() -> None:
    """Fake kernels and autograd for the C++ ops (only when the extension loaded)."""

    @torch.library.register_fake("skelfast::modalities")
    def _modalities_fake(x, scale, select, bone_parent, axis_partner, normal):
        check_one_device("modalities", x=x, scale=scale)
        _fake_shape_checks(x, scale, select, bone_parent, axis_partner, normal)
        N, _, T, V, M = x.shape
        return x.new_empty((N, len(select), 3, T, V, M))

    @torch.library.register_fake("skelfast::modalities_backward")
    def _modalities_backward_fake(grad_out, x, scale, select, bone_parent, axis_partner, normal):
        check_one_device("modalities_backward", grad_out=grad_out, x=x, scale=scale)
        _fake_shape_checks(x, scale, select, bone_parent, axis_partner, normal)
        torch._check(grad_out.dim() == 6 and grad_out.shape[1] == len(select), lambda: "grad_out must be (N,G,3,T,V,M)")
        return x.new_empty(x.shape)

    def _setup_context(ctx, inputs, output):
        x, scale, select, bone_parent, axis_partner, normal = inputs
        ctx.tables = (select, bone_parent, axis_partner, normal)
        ctx.save_for_backward(x if ctx.needs_input_grad[0] else None, scale)

    @first_order("skelfast::modalities")
    def _backward(ctx, grad_out):
        x, scale = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.skelfast.modalities_backward(grad_out.contiguous(), x, scale, *ctx.tables)
        return grad_x, None, None, None, None, None

    torch.library.register_autograd("skelfast::modalities", _backward, setup_context=_setup_context)


def _modalities_backward_composite(grad_out, x, scale, select, bone_parent, axis_partner, normal):
    """Backward by autograd through the reference, for a device with Triton but no compiled kernel.
    Degenerate points (atan2'(0, 0)) give 0 instead of NaN, as the compiled kernels do."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        out = reference.modalities_from_scale(xg, scale, select, Topology.from_tables(bone_parent, axis_partner, normal))
        (grad_x,) = torch.autograd.grad(out, xg, grad_out)
    return torch.nan_to_num(grad_x, nan=0.0, posinf=0.0, neginf=0.0)


def _triton_forward(x, scale, select, bone_parent, axis_partner, normal):
    from ..triton.modalities import modalities_forward
    return modalities_forward(x, scale, select, bone_parent, axis_partner, normal)


if _extension.has_cpu_kernels():
    _register()
    _backend.register_triton_kernel("modalities", _triton_forward,
                                    fallbacks={"modalities_backward": _modalities_backward_composite})
