"""skelfast.ops.graph_conv: the (grouped) ST-GCN spatial unit as one op (method.md §4.1-§4.2).

`torch.ops.skelfast.graph_conv` is defined in csrc/graph_conv.cpp with a CPU kernel (sparse graph
aggregation, then the projection: one grouped oneDNN 1x1 convolution for channels-last input, one
BLAS GEMM per group otherwise) and a CUDA kernel; this file adds its fake kernels, its
autograd formula (the registered `graph_conv_backward` op, so AOTAutograd only sees custom ops),
the autocast rule and the Triton path (attached by skelfast.ops._backend).

Maths, with G groups (independent units sharing the adjacency A):
    out[b, g, c, t, w] = sum_k sum_v (sum_ci W[g, k, c, ci] x[b, g, ci, t, v] + bias[g, k, c])
                         * A[k, v, w] * E[g, k, v, w]
which for G = 1 is skelfast.reference.graph_conv_reference.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _extension
from ..reference.stgcn import graph_conv_reference
from ._devices import check_one_device
from . import _backend
from ._first_order import first_order
from ._layout import memory_format

__all__ = ["graph_conv", "graph_conv_composite"]


def graph_conv_composite(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], A: torch.Tensor,
                         importance: Optional[torch.Tensor] = None, groups: int = 1) -> torch.Tensor:
    """The grouped unit in plain PyTorch (grouped 1x1 conv + einsum); the `torch` backend."""
    G = groups
    K, V = A.shape[0], A.shape[-1]
    if G == 1:
        imp = importance if importance is None or importance.dim() == 3 else importance[0]
        return graph_conv_reference(x, weight, bias, A, imp)
    w4 = weight if weight.dim() == 4 else weight[:, :, None, None]
    y = torch.nn.functional.conv2d(x, w4, bias, groups=G)
    B, _, T, _ = y.shape
    cout = y.shape[1] // (G * K)
    a = A.expand(G, K, V, V) if importance is None else A * importance
    out = torch.einsum("bgkctv,gkvw->bgctw", y.view(B, G, K, cout, T, V), a.to(y.dtype))
    return out.reshape(B, G * cout, T, V)


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):   # meta has no autocast
        return torch.get_autocast_dtype(device_type)
    return None


def graph_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], A: torch.Tensor,
               importance: Optional[torch.Tensor] = None, groups: int = 1) -> torch.Tensor:
    """Grouped ST-GCN spatial unit: 1x1 conv to K*Cout channels, graph aggregation with A * E, bias.

    Args:
        x: (B, G*Cin, T, V), any strides.
        weight: (G*K*Cout, Cin) or (G*K*Cout, Cin, 1, 1), as a `groups=G` 1x1 Conv2d weight; row
            (g*K + k)*Cout + c.
        bias: (G*K*Cout,) or None.
        A: (K, V, V) adjacency, A[k, v, w] from source v to target w. Constant for the kernels; an
            A that requires grad runs the PyTorch composite instead (its gradient is then exact).
        importance: (G, K, V, V) edge importance E (or (K, V, V) when G == 1), or None (= ones).
            The kernels read E only where A != 0 (A's sparsity), so a NaN/inf in E where A == 0
            stays out of the output there, while the composite's A * E turns it into NaN. The
            same holds for x and grad_out: a NaN/inf at joint v reaches only the joints w with
            A[:, v, w] != 0 (always v itself in ST-GCN graphs, whose subsets include the self
            link), where the composite's 0 * NaN spreads it to every joint of the frame.
        groups: G.
    Returns:
        (B, G*Cout, T, V) in x's dtype. Differentiable w.r.t. x, weight, bias and importance.

    Numerics: fp32 accumulation for fp16/bf16 (fp64 for fp64). Under CPU/CUDA autocast, x, weight
    and bias run in the autocast dtype while A and E stay in fp32 (the edge weights are formed in
    fp32 inside the kernel).
    """
    for name, t in (("weight", weight), ("bias", bias), ("A", A), ("importance", importance)):
        if t is not None and t.device != x.device:   # the kernels' own check would end the process on torch 2.11
            raise ValueError(f"graph_conv: {name} is on {t.device}, x on {x.device}; all must be on one device")
    if A.dim() != 3 or A.shape[0] < 1:
        raise ValueError(f"graph_conv: A must be (K, V, V) with K >= 1 subsets, got {tuple(A.shape)}")
    lowp = _autocast_dtype(x.device.type)
    if lowp is not None and x.dtype != torch.float64:   # autocast leaves float64 alone
        x, weight = x.to(lowp), weight.to(lowp)
        bias = None if bias is None else bias.to(lowp)
    else:
        weight = weight.to(x.dtype)
        bias = None if bias is None else bias.to(x.dtype)
    impl = _backend.resolve(x.device)
    # The kernels treat A as a constant (the models hold it as a buffer); a learnable A (an
    # adaptive graph) takes the composite, whose einsum gives A its gradient.
    if impl == "torch" or (A.requires_grad and torch.is_grad_enabled()):
        return graph_conv_composite(x, weight, bias, A, importance, groups)
    if impl == "triton":
        _backend.attach_triton()
    with torch.autocast(x.device.type, enabled=False):
        return torch.ops.skelfast.graph_conv(x, weight, bias, A, importance, groups)


def _fake_checks(x, weight, bias, A, importance, groups):
    torch._check(x.dim() == 4, lambda: "x must be (B, G*Cin, T, V)")
    torch._check(A.dim() == 3 and A.shape[1] == A.shape[2] == x.shape[3], lambda: "A must be (K, V, V)")
    torch._check(A.shape[0] >= 1, lambda: "A must have K >= 1 subsets")
    torch._check(x.shape[1] % groups == 0, lambda: "x channels must be divisible by groups")
    torch._check(weight.shape[1] * groups == x.shape[1], lambda: "weight must be (G*K*Cout, Cin[,1,1])")
    torch._check(weight.shape[0] % (groups * A.shape[0]) == 0, lambda: "weight rows must be G*K*Cout")
    if bias is not None:
        torch._check(bias.dim() == 1 and bias.shape[0] == weight.shape[0], lambda: "bias must be (G*K*Cout,)")


def _kernel_channels_last(x: torch.Tensor) -> bool:
    """The C++ kernel's test (is_channels_last in csrc/cpu/graph_conv_cpu.cpp): exact channels-last
    strides, size-1 dims included. A tensor torch calls channels-last only because its size-1 dims
    are ignored takes the contiguous path there, so the fake output must be contiguous too. The
    CUDA and Triton kernels always return contiguous outputs."""
    if x.device.type != "cpu" or x.dim() != 4 or x.is_contiguous():
        return False
    C, T, V = x.shape[1], x.shape[2], x.shape[3]
    return x.stride(1) == 1 and x.stride(3) == C and x.stride(2) == V * C and x.stride(0) == T * V * C


def _empty_like_layout(x: torch.Tensor, shape) -> torch.Tensor:
    if _kernel_channels_last(x):
        return x.new_empty(shape).contiguous(memory_format=torch.channels_last)
    return x.new_empty(shape)


def _register() -> None:
    @torch.library.register_fake("skelfast::graph_conv")
    def _graph_conv_fake(x, weight, bias, A, importance, groups):
        check_one_device("graph_conv", x=x, weight=weight, bias=bias, A=A, importance=importance)
        _fake_checks(x, weight, bias, A, importance, groups)
        cout = weight.shape[0] // (groups * A.shape[0])
        return _empty_like_layout(x, (x.shape[0], groups * cout, x.shape[2], x.shape[3]))

    @torch.library.register_fake("skelfast::graph_conv_backward")
    def _graph_conv_backward_fake(grad_out, x, weight, bias, A, importance, groups):
        check_one_device("graph_conv_backward", grad_out=grad_out, x=x, weight=weight, bias=bias, A=A,
                         importance=importance)
        _fake_checks(x, weight, bias, A, importance, groups)
        K, V = A.shape[0], A.shape[1]
        if importance is not None:
            de = importance.new_empty(importance.shape)
        else:
            de = A.new_empty((groups, K, V, V), dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
        return (_empty_like_layout(x, x.shape), x.new_empty(weight.shape), x.new_empty((weight.shape[0],)), de)

    def _setup_context(ctx, inputs, output):
        x, weight, bias, A, importance, groups = inputs
        ctx.groups = groups
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, weight, bias, A, importance)

    @first_order("skelfast::graph_conv")
    def _backward(ctx, grad_out):
        x, weight, bias, A, importance = ctx.saved_tensors
        # grad_out in x's layout (channels-last or contiguous), as the kernels expect
        grad_out = grad_out.contiguous(memory_format=memory_format(x))
        gx, gw, gb, ge = torch.ops.skelfast.graph_conv_backward(grad_out, x, weight, bias, A, importance, ctx.groups)
        need = ctx.needs_input_grad
        return (gx if need[0] else None, gw if need[1] else None, gb if (need[2] and ctx.has_bias) else None,
                None, ge if (need[4] and importance is not None) else None, None)

    torch.library.register_autograd("skelfast::graph_conv", _backward, setup_context=_setup_context)


def _graph_conv_backward_composite(grad_out, x, weight, bias, A, importance, groups):
    """Backward by autograd through the composite (a device with Triton but no compiled kernel)."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        wg = weight.detach().requires_grad_(True)
        bg = (torch.zeros(weight.shape[0], dtype=x.dtype, device=x.device) if bias is None else bias.detach())
        bg.requires_grad_(True)
        K, V = A.shape[0], A.shape[1]
        eg = (torch.ones(groups, K, V, V, dtype=torch.float32, device=x.device) if importance is None
              else importance.detach()).requires_grad_(True)
        out = graph_conv_composite(xg, wg, bg, A, eg, groups)
        return torch.autograd.grad(out, (xg, wg, bg, eg), grad_out)


def _triton_forward(x, weight, bias, A, importance, groups):
    from ..triton.graph_conv import graph_conv_forward
    return graph_conv_forward(x, weight, bias, A, importance, groups)


def _triton_backward(grad_out, x, weight, bias, A, importance, groups):
    from ..triton.graph_conv import graph_conv_backward
    return graph_conv_backward(grad_out, x, weight, bias, A, importance, groups)


if _extension.has_cpu_kernels() and hasattr(torch.ops.skelfast, "graph_conv"):
    _register()
    _backend.register_triton_kernel("graph_conv", _triton_forward)
    _backend.register_triton_kernel("graph_conv_backward", _triton_backward)
